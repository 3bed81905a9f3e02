"""No credentials, tokens or hostnames of private infrastructure anywhere in the repository.

Scans every file git would commit (tracked + untracked, not ignored): well-known token shapes
everywhere; credential-looking keys with literal values in configuration files (YAML, JSON,
TOML, INI, env, Dockerfiles, Makefiles, shell); private IP addresses, private DNS suffixes and
URLs with embedded passwords everywhere. Placeholders (REPLACE_ME, ${VAR}, <...>) are fine.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# AWS's published documentation examples are not credentials.
ALLOWED_LITERALS = {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}

TOKEN_PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY( BLOCK)?-----"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
    "GitLab token": re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),
    "API secret key": re.compile(r"\bsk-(?:proj-|live-)?[A-Za-z0-9]{32,}\b"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
}
PRIVATE_IP = re.compile(
    r"(?<![\w.=/-])(?:10\.\d{1,3}\.\d{1,3}\.\d{1,3}|192\.168\.\d{1,3}\.\d{1,3}"
    r"|172\.(?:1[6-9]|2\d|3[01])\.\d{1,3}\.\d{1,3})(?![\w.])"
)
PRIVATE_HOST = re.compile(r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:internal|corp|intranet|lan|localdomain|home\.arpa)\b")
URL_WITH_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^/\s@'\"]+)@[\w.-]+")
CREDENTIAL_KEY = re.compile(
    r"""(?ix)(?<![A-Za-z0-9])["']?
    ([A-Za-z0-9_.-]*?(?:password|passwd|secret_access_key|secret_key|access_key_id|access_key|api_key|apikey
       |auth_token|access_token|bearer_token|client_secret|root_user|webhook_token))
    ["']?\s*[:=]\s*(.*)$"""
)
PLACEHOLDER = re.compile(
    r"""^(?:|REPLACE_ME|CHANGE_ME|changeme|\.\.\.|\*+|null|none|~|true|false
        |<[^>]*>|\$\{[^}]*\}|\$\([^)]*\)|\$[A-Za-z_]\w*|\{\{.*\}\}|[A-Z][A-Z0-9_]*)$""", re.X)
CONFIG_SUFFIXES = {".yaml", ".yml", ".json", ".toml", ".ini", ".cfg", ".conf", ".env", ".properties", ".sh", ".mk"}
CONFIG_NAMES = {"Dockerfile", "Makefile", ".env", "run"}


def _repo_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], capture_output=True,
                             text=True, check=True, cwd=REPO).stdout.splitlines()
        return [REPO / p for p in out if (REPO / p).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".emoflow", "__pycache__"}
        return [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.parts)]


def _value(raw: str) -> str:
    """The literal after ``key:`` / ``key=``: a quoted string, or the first word."""
    value = raw.strip()
    if value[:1] in ("'", '"'):
        end = value.find(value[0], 1)
        return value[1:end] if end > 0 else value[1:]
    for opening, closing in (("<", ">"), ("{{", "}}"), ("${", "}")):
        if value.startswith(opening) and closing in value:
            return value[:value.index(closing) + len(closing)]
    return value.split()[0].rstrip(",;") if value else ""


def scan_text(text: str, config_like: bool) -> list[str]:
    """Findings (``line N: what``) in one file's text."""
    findings = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in TOKEN_PATTERNS.items():
            for m in pattern.finditer(line):
                if m.group(0) not in ALLOWED_LITERALS:
                    findings.append(f"line {number}: {what}")
        if PRIVATE_IP.search(line):
            findings.append(f"line {number}: private IP address {PRIVATE_IP.search(line).group(0)}")
        host = PRIVATE_HOST.search(line)
        if host:
            findings.append(f"line {number}: private hostname {host.group(0)}")
        for m in URL_WITH_PASSWORD.finditer(line):
            if not PLACEHOLDER.match(m.group(1)) and not m.group(1).startswith("{"):
                findings.append(f"line {number}: URL with an embedded password")
        if config_like:
            m = CREDENTIAL_KEY.search(line)
            if m:
                value = _value(m.group(2))
                if value not in ALLOWED_LITERALS and not PLACEHOLDER.match(value) and not value.startswith(("{", "[")):
                    findings.append(f"line {number}: {m.group(1)} has a literal value")
    return findings


def test_scanner_catches_each_kind_of_leak():
    # assembled at run time so this file itself stays clean
    key_id = "AKIA" + "Q3EGRPXNBV5LK2ZM"
    cases = {
        f"aws_key: {key_id}": "AWS access key id",
        "-----BEGIN " + "RSA PRIVATE KEY-----": "private key",
        "token = gh" + "p_" + "a" * 36: "GitHub token",
        "endpoint: minio." + "corp:9000": "private hostname",
        "host: 10." + "1.2.3": "private IP address",
        "s3://user:" + "s3cr3t-pw@store.example.org/bucket": "embedded password",
        "MINIO_ROOT_PASSWORD: " + "hunter2hunter2": "has a literal value",
        '"aws_secret_access_key": "' + "x7Fq/9kLmN" + '"': "has a literal value",
    }
    for text, what in cases.items():
        found = scan_text(text, config_like=True)
        assert any(what in f for f in found), (text, found)
    clean = [
        "AWS_SECRET_ACCESS_KEY: REPLACE_ME", "password: ${MINIO_PASSWORD}", "api_key: <your key>",
        "secretKey: AWS_SECRET_ACCESS_KEY", "endpoint: minio.emoflow.svc.cluster.local:9000",
        "nvidia-curand==10.4.0.35", "host: 127.0.0.1", "url: http://{user}:{password}@host",
        "AKIAIOSFODNN7EXAMPLE", "access_key: ''",
    ]
    for text in clean:
        assert scan_text(text, config_like=True) == [], text


def test_no_credentials_tokens_or_private_hosts_in_the_repository():
    files = _repo_files()
    assert len(files) > 20
    problems = []
    for path in files:
        if path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue  # binary
        config_like = path.suffix in CONFIG_SUFFIXES or path.name in CONFIG_NAMES
        problems += [f"{path.relative_to(REPO)}: {f}" for f in scan_text(text, config_like)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("rel", ["manifests/base/s3-secret.yaml", "manifests/components/retrain-webhook/webhook.yaml"])
def test_secret_template_has_placeholders_only(rel):
    text = (REPO / rel).read_text()
    assert "REPLACE_ME" in text
    assert scan_text(text, config_like=True) == []
