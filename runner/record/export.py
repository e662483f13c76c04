"""``python -m runner.export MANIFEST [--out DIR]``: what a verified run ran, without the runner.

Four files from the manifest's plan (the argv and environment vLLM was started with):

- ``serve.yaml``: vLLM's own config-file format (``--config``; option names as keys, read by
  ``FlexibleArgumentParser.load_config_file``), for ``vllm serve --config serve.yaml`` or
  ``python -m vllm.entrypoints.openai.api_server --config serve.yaml``;
- ``vllm.env``: the environment, shell syntax (``set -a; . ./vllm.env; set +a``); a secret is a
  reference to a variable of the caller's (``HF_TOKEN=${HF_TOKEN}``), never its value;
- ``vllm.service``: a systemd unit; the secrets come from an ``EnvironmentFile`` the operator
  writes (systemd does not expand ``${…}`` in one, so the references cannot be used there);
- ``deployment.yaml``: a Kubernetes ConfigMap (serve.yaml) and a single-node Deployment: the
  GPUs as ``nvidia.com/gpu`` limits, the environment (secrets from a Secret), a liveness probe on
  ``/health``, readiness on ``/v1/models``.

The manifest holds no secret values (redact.py), and nothing here writes a value whose name
looks secret: an old manifest's leaked value still becomes a reference.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from runner.plan.secret_flags import MASK
from runner.record.diff import BadInput, is_option, load_manifest
from runner.record.redact import _SECRET_FLAGS, is_secret_name

SECRET_NAME_K8S = "vllm-secrets"  # the Secret the Deployment's secret variables come from
# The runner's own loopback address; a pod is probed on its own IP.
_POD_HOST = "0.0.0.0"


# --------------------------------------------------------------------------- from the manifest
def load(path: Path) -> Tuple[Path, Dict[str, Any]]:
    path = Path(path)
    file = path / "manifest.json" if path.is_dir() else path
    manifest = load_manifest(path)  # not a file, not JSON, not a manifest: one line (BadInput)
    if manifest.get("status") != "verified":
        raise BadInput(f"{file}: status is {manifest.get('status')}, export takes a verified run's manifest")
    if not (manifest.get("plan") or {}).get("argv"):
        raise BadInput(f"{file}: the manifest has no plan argv")
    return file, manifest


def _value(text: str) -> Any:
    """An argv value as the YAML scalar vLLM's loader turns back into the same string."""
    if text.startswith("{") or text.startswith("["):
        try:
            return json.loads(text)
        except ValueError:
            return text
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if str(value) == text:  # "1.0", "007" stay strings: str() must give back the argv
            return value
    return text


def split_argv(argv: Sequence[str]) -> Tuple[List[str], Dict[str, Any], List[str]]:
    """vLLM's argv → (interpreter and module, options as the config file holds them, the secret
    options left out). A flag with several values becomes a list, a bare flag ``true``."""
    head: List[str] = []
    i = 0
    while i < len(argv) and not argv[i].startswith("--"):
        head.append(argv[i])
        i += 1
    options: Dict[str, Any] = {}
    secret: List[str] = []
    while i < len(argv):
        flag, eq, inline = argv[i].partition("=")
        i += 1
        values = [inline] if eq else []
        while not eq and i < len(argv) and not is_option(argv[i]):
            values.append(argv[i])
            i += 1
        if flag in _SECRET_FLAGS or MASK in values:
            secret.append(flag)
            continue
        key = flag[2:]
        options[key] = True if not values else _value(values[0]) if len(values) == 1 else [_value(v) for v in values]
    return head, options, secret


def environment(manifest: Mapping[str, Any]) -> Tuple[Dict[str, str], List[str]]:
    """(plain variables, secret variable names). The API key vLLM reads is VLLM_API_KEY; a run
    whose serve.api_key_env named another variable passed it on under that name. With the
    default name the plan does not say whether a key was set: it is listed, as optional."""
    plain: Dict[str, str] = {}
    secrets: List[str] = []
    for name, value in ((manifest.get("plan") or {}).get("env") or {}).items():
        if is_secret_name(name) or value == MASK:
            secrets.append(name)
        else:
            plain[name] = str(value)
    key_env = ((manifest.get("config") or {}).get("serve") or {}).get("api_key_env")
    if key_env and "VLLM_API_KEY" not in secrets:
        secrets.append("VLLM_API_KEY")
    return plain, secrets


def optional_secrets(manifest: Mapping[str, Any]) -> List[str]:
    """VLLM_API_KEY when only the default serve.api_key_env names it (a key may not have been set)."""
    return [] if "VLLM_API_KEY" in ((manifest.get("plan") or {}).get("env") or {}) else ["VLLM_API_KEY"]


def _secret_source(name: str, manifest: Mapping[str, Any]) -> str:
    """The caller's variable a secret comes from: VLLM_API_KEY from serve.api_key_env's."""
    key_env = ((manifest.get("config") or {}).get("serve") or {}).get("api_key_env")
    return key_env if name == "VLLM_API_KEY" and key_env else name


# --------------------------------------------------------------------------- the four files
def serve_config(options: Mapping[str, Any], source: str) -> str:
    header = f"# vLLM serve options of a verified run ({source}).\n# Start: vllm serve --config serve.yaml\n"
    return header + yaml.safe_dump(dict(options), sort_keys=False, default_flow_style=False)


def env_file(plain: Mapping[str, str], secrets: Sequence[str], manifest: Mapping[str, Any], source: str) -> str:
    lines = [
        f"# Environment of a verified vLLM run ({source}).",
        "# Secrets are references to your own variables: export them first, then",
        "#   set -a; . ./vllm.env; set +a",
    ]
    lines += [f"{k}={shlex.quote(v)}" for k, v in plain.items()]
    lines += [f'{name}="${{{_secret_source(name, manifest)}}}"' for name in secrets]
    return "\n".join(lines) + "\n"


def _systemd_quote(arg: str) -> str:
    """systemd's ExecStart quoting: double quotes, with backslash and quote escaped."""
    if re.fullmatch(r"[A-Za-z0-9_./:,@+=-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(
    head: Sequence[str], config_path: Path, plain: Mapping[str, str], secrets: Sequence[str], manifest: Mapping
) -> str:
    plan = manifest.get("plan") or {}
    cfg = manifest.get("config") or {}
    ready = ((cfg.get("verify") or {}).get("ready_timeout_s")) or 900
    grace = ((cfg.get("launch") or {}).get("stop_grace_s")) or 20
    exec_start = " ".join(_systemd_quote(a) for a in [*head, "--config", str(config_path)])
    lines = [
        "[Unit]",
        f"Description=vLLM {plan.get('model_name')} (TP={plan.get('tensor_parallel_size')}), from a runner manifest",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
    ]
    lines += [f"Environment={_systemd_quote(f'{k}={v}')}" for k, v in plain.items()]
    if secrets:
        lines.append(f"# {', '.join(secrets)}: one NAME=value line each in this file (mode 0600), never here")
        # '-': the file may be absent when every secret is optional (an API key nobody set)
        missing_ok = "-" if set(secrets) <= set(optional_secrets(manifest)) else ""
        lines.append(f"EnvironmentFile={missing_ok}/etc/vllm/secrets.env")
    lines += [
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        "RestartSec=10",
        # the start-up the runner waited for (verify.ready_timeout_s), and its stop grace
        f"TimeoutStartSec={int(ready)}",
        "KillSignal=SIGTERM",
        "KillMode=control-group",
        f"TimeoutStopSec={int(grace)}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _k8s_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", str(text).lower()).strip("-")
    return ("vllm-" + name)[:63].rstrip("-") or "vllm"


def kubernetes(
    options: Mapping[str, Any],
    plain: Mapping[str, str],
    secrets: Sequence[str],
    manifest: Mapping[str, Any],
    image: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """A ConfigMap with serve.yaml and a one-replica Deployment: the runner's single node."""
    plan = manifest.get("plan") or {}
    optional = optional_secrets(manifest)
    name = _k8s_name(plan.get("model_name") or "model")
    port = int(options.get("port") or 8000)
    model_dir = str(options.get("model") or plan.get("model_path"))
    pod_options = dict(options) | {"host": _POD_HOST}
    vllm_version = (manifest.get("versions") or {}).get("vllm") or "latest"
    gpus = len(plan.get("devices") or []) if plan.get("device") == "cuda" else 0
    env: List[Dict[str, Any]] = [{"name": k, "value": v} for k, v in plain.items() if k != "CUDA_VISIBLE_DEVICES"]
    env += [
        {"name": s, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME_K8S, "key": s, "optional": s in optional}}}
        for s in secrets
    ]
    resources: Dict[str, Any] = {"limits": {"nvidia.com/gpu": gpus}} if gpus else {}
    if "VLLM_API_KEY" in secrets:
        # /v1 needs the key: the probe sends it from the container's own environment
        check = (
            "import os, urllib.request; urllib.request.urlopen(urllib.request.Request("
            f"'http://127.0.0.1:{port}/v1/models', "
            "headers={'Authorization': 'Bearer ' + os.environ.get('VLLM_API_KEY', '')}))"
        )
        readiness: Dict[str, Any] = {"exec": {"command": ["python3", "-c", check]}}
    else:
        readiness = {"httpGet": {"path": "/v1/models", "port": "http"}}
    ready_s = int(((manifest.get("config") or {}).get("verify") or {}).get("ready_timeout_s") or 900)
    container = {
        "name": "vllm",
        "image": image or f"vllm/vllm-openai:v{vllm_version.split('+')[0]}",
        "command": ["python3", "-m", "vllm.entrypoints.openai.api_server"],
        "args": ["--config", "/etc/vllm/serve.yaml"],
        "ports": [{"name": "http", "containerPort": port}],
        "env": env,
        "resources": resources,
        # loading takes minutes: the start-up probe holds the others off for the runner's ready timeout
        "startupProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": max(1, ready_s // 10),
        },
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": readiness | {"periodSeconds": 10, "failureThreshold": 3},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/vllm", "readOnly": True},
            {"name": "model", "mountPath": model_dir, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},  # tensor-parallel ranks share memory through it
        ],
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-config"},
        "data": {"serve.yaml": yaml.safe_dump(pod_options, sort_keys=False)},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # the GPUs are held by the old pod until it stops
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": f"{name}-config"}},
                        {"name": "model", "hostPath": {"path": model_dir, "type": "Directory"}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                    ],
                },
            },
        },
    }
    return [config_map, deployment]


def export(path: Path, out_dir: Optional[Path] = None, image: Optional[str] = None) -> Dict[str, Path]:
    file, manifest = load(path)
    out = Path(out_dir) if out_dir else file.parent / "export"
    out.mkdir(parents=True, exist_ok=True)
    head, options, _ = split_argv(manifest["plan"]["argv"])
    plain, secrets = environment(manifest)
    source = str(file)
    cpu = manifest["plan"].get("device") == "cpu" and not image
    written = {
        "serve.yaml": serve_config(options, source),
        "vllm.env": env_file(plain, secrets, manifest, source),
        "vllm.service": systemd_unit(head, (out / "serve.yaml").resolve(), plain, secrets, manifest),
        "deployment.yaml": f"# ConfigMap + Deployment of a verified vLLM run ({source}).\n"
        + (f"# Create the Secret first: kubectl create secret generic {SECRET_NAME_K8S} " if secrets else "")
        + (" ".join(f"--from-literal={s}=…" for s in secrets) + "\n" if secrets else "")
        + ("# A CPU run: give a CPU build of vLLM's image with --image.\n" if cpu else "")
        + yaml.safe_dump_all(kubernetes(options, plain, secrets, manifest, image), sort_keys=False),
    }
    paths = {}
    for name, text in written.items():
        (out / name).write_text(text)
        paths[name] = out / name
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.export",
        description="serve.yaml (vllm serve --config), vllm.env, vllm.service and deployment.yaml from a verified run",
    )
    parser.add_argument("manifest", type=Path, help="a verified run's manifest.json, or its run dir")
    parser.add_argument("--out", type=Path, help="where to write (default: <run dir>/export)")
    parser.add_argument("--image", help="the Deployment's container image (default: vllm/vllm-openai:v<vLLM version>)")
    args = parser.parse_args(argv)
    try:
        paths = export(args.manifest, args.out, args.image)
    except BadInput as e:
        print(f"error: {e}. Fix: python -m runner.export outputs/…/manifest.json of a verified run", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name:16} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
