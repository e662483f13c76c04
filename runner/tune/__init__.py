"""mode=tune: which configuration to serve under a latency target (docs/tune.md, "Tuning").

space.py expands the search space into candidates, rank.py orders and prunes them from the performance
model's predictions, bisect.py finds a launched candidate's highest load that meets the SLO, run.py plans
and launches candidates as subprocesses of the runner itself, report.py writes tune.md, tune.json, the
Pareto plot and the winner's recipe.
"""
