"""Which vLLM options carry a secret, and what a masked value reads as. The planner refuses
these options in serve.extra_args; runner.record.redact masks them wherever a file is written."""

MASK = "***redacted***"
SECRET_OPTIONS = ("api_key", "hf_token")
