"""How the host's pip reaches PyPI, as build arguments for Dockerfiles that run pip.

An image that pip-installs something must reach the same index the host does, which on
a lab machine is often a mirror or a proxy with its own CA. Nothing of that belongs in
the repository, so `executors build` reads it from the host's pip settings (environment
and pip.conf, as `pip config list` shows them) at build time: the index URLs, trusted
hosts, and the CA certificates the host's pip trusts beyond the public ones (a Debian
image already has those): the ones in neither certifi's bundle nor the distribution's
Mozilla set, which on Debian are the ones added in /usr/local/share/ca-certificates.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import certifi

DISTRIBUTION_CAS = Path("/usr/share/ca-certificates/mozilla")
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
# pip setting -> build argument; `file:` indexes are the host's disk, useless in a build.
_URL_SETTINGS = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL"}


def pip_settings(listing: str) -> dict[str, str]:
    """`pip config list` output as {setting: value}; later lines (environment) win."""
    settings: dict[str, str] = {}
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if not sep or "." not in key:
            continue
        try:
            settings[key.split(".", 1)[1]] = str(ast.literal_eval(value))
        except (ValueError, SyntaxError):
            continue
    return settings


def certificates(pem: str) -> list[str]:
    return [" ".join(block.split()) for block in _PEM.findall(pem)]


def build_args(
    settings: Mapping[str, str], read: Callable[[Path], str], public_pem: str
) -> dict[str, str]:
    """The build arguments that let a build's pip reach the index the host's pip uses."""
    args: dict[str, str] = {}
    for setting, arg in _URL_SETTINGS.items():
        urls = [u for u in settings.get(setting, "").split() if u.startswith(("http:", "https:"))]
        if urls:
            args[arg] = " ".join(urls)
    if trusted := settings.get("trusted-host", "").strip():
        args["PIP_TRUSTED_HOST"] = trusted
    if cert := settings.get("cert"):
        try:
            host = read(Path(cert))
        except OSError:
            host = ""
        public = set(certificates(public_pem))
        extra = [block for block in _PEM.findall(host) if " ".join(block.split()) not in public]
        if extra:
            args["PIP_EXTRA_CA_CERTS"] = "\n".join(extra)
    return args


def host_pip_build_args() -> dict[str, str]:
    """Build arguments from this machine's pip; none when pip cannot say (it then uses PyPI)."""
    try:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    public = [Path(certifi.where())]
    if DISTRIBUTION_CAS.is_dir():
        public += sorted(DISTRIBUTION_CAS.glob("*.crt"))
    return build_args(pip_settings(listing), _text, "\n".join(_text(path) for path in public))


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")
