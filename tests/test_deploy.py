"""The deployment guide (docs/deploy.md) and the Dockerfile tell the truth.

Every ``kachery-hub`` command line in the guide parses with the real command
line parser (flags and subcommands that exist, values it accepts); every
``KACHERY_HUB_*`` variable it names is one the hub or the client reads; its
systemd unit is a unit; its nginx (and HAProxy) configuration passes the real
``nginx -t`` (``haproxy -c``) where those are installed; the Dockerfile's
entrypoint is a valid ``serve`` command, and the image builds where a Docker
daemon answers.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

pytest.importorskip("fastapi")

GUIDE = REPO / "docs" / "deploy.md"
DOCKERFILE = REPO / "Dockerfile"

# `kachery-hub` in a command's place (a line's start, after a space, `=`, a backtick or a `bin/` folder),
# followed by its arguments; a path or a name merely containing it (/var/lib/kachery-hub, kachery-hub.service) is not.
_COMMAND = re.compile(r"(?:^|(?<=[\s`=(])|(?<=bin/))kachery-hub(?=[ \t]+[a-z-])(?P<rest>[^\n`]*)", re.M)
_END_OF_COMMAND = {"&&", "||", ";", "|", "&"}


def _fences(text: str, *langs: str) -> list[str]:
    """The bodies of the fenced code blocks in ``text`` whose info string is one of ``langs`` (any if none)."""
    blocks = re.findall(r"^ {0,3}```([\w-]*)\n(.*?)^ {0,3}```", text, re.S | re.M)  # a list item's are indented
    return [body for lang, body in blocks if not langs or lang in langs]


def _inline_spans(text: str) -> list[str]:
    prose = re.sub(r"^ {0,3}```.*?^ {0,3}```", "", text, flags=re.S | re.M)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def _joined(block: str) -> str:
    """Continuation lines (a trailing backslash) joined, as a shell and systemd join them."""
    return re.sub(r"\\\n\s*", " ", block)


def _commands(text: str) -> Iterator[tuple[list[str], bool]]:
    """Each ``kachery-hub`` command in ``text``: its arguments, and whether it is the image of a ``docker run``."""
    for line in text.splitlines():
        for m in _COMMAND.finditer(line):
            words = shlex.split(m.group("rest").split(" #")[0], posix=True)
            end = next((i for i, w in enumerate(words) if w in _END_OF_COMMAND or w.startswith(">")), len(words))
            before = line[:m.start()]
            image = re.match(r"\s*(sudo\s+)?docker\s+run\s", before) is not None and not before.endswith("/")
            yield words[:end], image


def _entrypoint() -> list[str]:
    m = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.M)
    assert m is not None, "the Dockerfile has no ENTRYPOINT in exec form"
    argv: list[str] = json.loads(m.group(1))
    return argv


def _parse(argv: list[str]) -> str | None:
    """None if ``kachery-hub ARGV`` parses with the real parser (``--help`` included), else argparse's complaint."""
    from kachery_hub._cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:
            return None if e.code == 0 else err.getvalue().strip().splitlines()[-1]
    return None


def _unknown_words(argv: list[str]) -> list[str]:
    """The subcommands and flags in ``argv`` (arguments may be left out) that the parser has not got."""
    from kachery_hub._cli import build_parser

    parser: argparse.ArgumentParser = build_parser()
    unknown: list[str] = []
    for word in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and not word.startswith("-"):
            if word not in subs[0].choices:
                return [*unknown, word]  # nothing after an unknown command can be checked
            parser = subs[0].choices[word]
        elif word.startswith("-") and word.split("=")[0] not in parser._option_string_actions:
            unknown.append(word.split("=")[0])
    return unknown


def check_commands(text: str) -> list[str]:
    """What is wrong with the ``kachery-hub`` commands in a guide: one line per problem."""
    problems = []
    entry = _entrypoint()
    for block in _fences(text):
        for argv, image in _commands(_joined(block)):
            full = entry[1:] + argv if image else argv
            complaint = _parse(full)
            if complaint is not None:
                problems.append(f"`kachery-hub {shlex.join(full)}`: {complaint}")
    for span in _inline_spans(text):
        for argv, image in _commands(span):
            full = entry[1:] + argv if image else argv
            problems += [f"`{span}`: no such command or flag {w!r}" for w in _unknown_words(full)]
    return problems


def check_variables(text: str) -> list[str]:
    from kachery_core import _constants
    from kachery_hub import _settings

    known = {v for k, v in vars(_settings).items() if k.startswith("ENV_")}
    known |= {v for k, v in vars(_constants).items() if k.startswith("ENV_")}  # the client's KACHERY_HUB_URL...
    named = set(re.findall(r"\bKACHERY_HUB_[A-Z0-9_]*[A-Z0-9]\b", text))
    return [f"{name} is no setting of the hub or the client" for name in sorted(named - known)]


def test_every_command_in_the_guide_parses() -> None:
    text = GUIDE.read_text()
    commands = [c for block in _fences(text) for c in _commands(_joined(block))]
    subcommands = {argv[0] for argv, image in commands if not image}
    # the guide shows every subcommand, and serve from systemd and from Docker
    assert {"serve", "token", "client", "gc", "migrate"} <= subcommands, subcommands
    assert any(image for _, image in commands)
    assert check_commands(text) == []


def test_a_wrong_flag_or_command_in_the_guide_is_caught() -> None:
    text = GUIDE.read_text()
    assert "kachery-hub migrate --check" in text and "--grace 1h" in text
    for wrong, expected in [
        (text.replace("kachery-hub migrate --check", "kachery-hub migrate --dry-check", 1), "--dry-check"),
        (text.replace("--grace 1h", "--grace-period 1h", 1), "--grace-period"),
        (text.replace("--grace 1h", "--grace soon", 1), "soon"),
        (text.replace("--admin-email pi@", "--admin-mail pi@", 1), "--admin-mail"),  # the unit's ExecStart
        (text + "\nThen `kachery-hub gc --prune` once.\n", "--prune"),
        (text + "\n```bash\nsudo kachery-hub collect --grace 1h\n```\n", "collect"),
        (text + "\n```bash\ndocker run -d kachery-hub --public-host x\n```\n", "--public-host"),
    ]:
        problems = check_commands(wrong)
        assert len(problems) == 1 and expected in problems[0], (expected, problems)


def test_every_setting_the_guide_names_exists() -> None:
    text = GUIDE.read_text()
    assert check_variables(text) == []
    assert check_variables(text.replace("KACHERY_HUB_GC_INTERVAL=86400", "KACHERY_HUB_GC_PERIOD=86400", 1)) == [
        "KACHERY_HUB_GC_PERIOD is no setting of the hub or the client"]


def _unit() -> tuple[configparser.RawConfigParser, list[str]]:
    units = [b for b in _fences(GUIDE.read_text(), "ini") if "[Service]" in b]
    assert len(units) == 1, "the guide shows one whole systemd unit"
    text = _joined(units[0])
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
    parser.read_string(text)
    environment = re.findall(r"^Environment=(.*)$", text, re.M)
    return parser, environment


def test_the_systemd_unit_is_a_unit_that_runs_serve() -> None:
    from kachery_hub import _settings

    unit, environment = _unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].startswith("/") and argv[0].endswith("/kachery-hub") and argv[1] == "serve"
    assert _parse(argv[1:]) is None
    assert service["Restart"] == "on-failure"
    assert service["User"] and service["User"] != "root"
    assert service["EnvironmentFile"].startswith("/")
    assert "/api/ready" in service["ExecStartPost"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    names = {v.split("=", 1)[0] for v in environment}
    known = {v for k, v in vars(_settings).items() if k.startswith("ENV_")}
    assert names and names <= known, names - known
    assert {"KACHERY_HUB_PUBLIC_URL", "KACHERY_HUB_TRUSTED_PROXIES"} <= names


def test_the_dockerfile_runs_serve_as_a_user_with_a_volume_and_a_health_check() -> None:
    text = DOCKERFILE.read_text()
    entry = _entrypoint()
    assert entry[:2] == ["kachery-hub", "serve"] and _parse(entry[1:]) is None
    port = entry[entry.index("--port") + 1]
    assert entry[entry.index("--host") + 1] == "0.0.0.0"
    assert re.search(rf"^EXPOSE\s+{port}\s*$", text, re.M)
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1] not in ("root", "0")
    volume = re.search(r"^VOLUME\s+\[\"(/\S+)\"\]", text, re.M)
    assert volume is not None and re.search(rf"^ENV KACHERY_HUB_DATA={volume.group(1)}\s*$", text, re.M)
    health = re.search(r"^HEALTHCHECK .*\\\n\s*CMD (.*)$", text, re.M)
    assert health is not None and f"http://127.0.0.1:{port}/api/health" in health.group(1)
    assert "[hub]" in text
    # what the build copies exists and is not ignored
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    for src in re.findall(r"^COPY (?!--from)(.*) \S+$", text, re.M):
        for name in src.split():
            assert (REPO / name).exists(), name
            assert name.rstrip("/") not in ignored, name
    assert {".venv", ".git", "bench/results", ".kachery-*"} <= ignored


def test_the_health_check_paths_are_real_endpoints() -> None:
    text = GUIDE.read_text()
    paths = {"/api/health", "/api/ready", "/metrics", "/api/session", "/auth/callback"}
    assert paths <= set(re.findall(r"(/(?:api|auth)/[a-z-]+|/metrics)\b", text))
    from kachery_hub import __doc__ as endpoints

    assert endpoints is not None
    for path in paths - {"/auth/callback"}:
        assert re.search(rf"^\S+\s+{re.escape(path)}\s", endpoints, re.M), path
    assert "``/auth/callback``" in endpoints


# -- the real tools, where this machine has them ------------------------------------------------

def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab.example.org")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    crt, pem = folder / "cert.pem", folder / "key.pem"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def nginx_problems(text: str, folder: Path) -> list[str]:
    """What ``nginx -t`` says of each nginx block of a guide, put where the guide says it goes."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    assert nginx is not None
    crt, pem = _self_signed(folder)
    blocks = _fences(text, "nginx")
    the_map = re.search(r"^map \$http_upgrade .*?^}\n", "".join(blocks), re.S | re.M)
    problems = []
    for i, block in enumerate(blocks):
        block = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {crt};", block)
        block = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {pem};", block)
        if block.lstrip().startswith("location"):  # a part of the hub's server block
            block = f"server {{\n listen 127.0.0.1:8080;\n server_name lab.example.org;\n{block}}}\n"
        if "$connection_upgrade" in block and "map $http_upgrade" not in block and the_map:
            block = the_map.group(0) + block
        temp = "".join(f" {kind}_temp_path {folder / kind};\n" for kind in
                       ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = folder / f"nginx-{i}.conf"
        conf.write_text(f"events {{}}\nhttp {{\n{temp} access_log off;\n{block}\n}}\n")
        run = subprocess.run([nginx, "-t", "-q", "-p", str(folder), "-c", str(conf),
                              "-g", f"pid {folder / 'nginx.pid'}; error_log {folder / 'error.log'};"],
                             capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            problems.append(f"block {i + 1}: {run.stderr.strip()}")
    return problems


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="no nginx on this machine (apt-get install nginx)")
def test_the_nginx_configuration_passes_nginx_t(tmp_path: Path) -> None:
    text = GUIDE.read_text()
    assert len(_fences(text, "nginx")) >= 3
    assert nginx_problems(text, tmp_path) == []
    wrong = text.replace("proxy_buffering off;", "proxy_buffering nope;", 1)
    problems = nginx_problems(wrong, tmp_path)
    assert len(problems) == 1 and "proxy_buffering" in problems[0], problems


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="no haproxy on this machine (apt-get install haproxy)")
def test_the_haproxy_configuration_passes_haproxy_c(tmp_path: Path) -> None:
    (block,) = _fences(GUIDE.read_text(), "haproxy")
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(block)
    run = subprocess.run(["haproxy", "-c", "-f", str(conf)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def _docker_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.slow
def test_the_image_builds_and_its_entrypoint_runs() -> None:
    if not _docker_answers():
        pytest.skip("no Docker daemon on this machine")
    tag = "kachery-hub-test:latest"
    build = subprocess.run(["docker", "build", "-t", tag, str(REPO)], capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stderr[-4000:]
    try:
        run = subprocess.run(["docker", "run", "--rm", tag, "--help"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "--public-url" in run.stdout and "--workers" in run.stdout
        user = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"],
                              capture_output=True, text=True, timeout=120)
        assert user.stdout.strip() not in ("", "0")
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)
