"""fedurl-deploy: the production start, nginx in front of the aggregation server.

    fedurl-deploy --bundle bundles/default --data-dir /var/lib/fedurl [--db URL] [--host H --port P]

Runs the app (fedurl-serve's waitress server, on 127.0.0.1 and a free port, trusting one proxy
hop for the client address) and nginx on --host:--port in front of it, until Ctrl-C or SIGTERM,
which stop both; if nginx dies the app stops too. With ``--workers N`` (PostgreSQL only) N - 1
more app processes (``fedurl-serve --front``) run on their own ports in nginx's upstream, and
one that dies is started again. At each start it copies the page's files (the
web client, onnxruntime-web's page files) into DATA_DIR/front/public with a level-9 ``.gz`` beside
each that gzip shrinks (what the app would send gzipped), renders DATA_DIR/front/nginx.conf from
deploy/nginx.conf.j2 and checks it with ``nginx -t``. server/README.md, "Production start".
"""

from __future__ import annotations

import argparse
import ctypes
import grp
import gzip
import logging
import mimetypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import jinja2
from flask import Flask
from werkzeug.utils import get_content_type

from server import db, logs, web
from server.api import BODY_FILE_HEADER
from server.app import ISOLATION_HEADERS, create_app
from server.cli import FRONT_DIR, front_body_dir, handle_ctrl_c, make_server, trust_front_bodies

TEMPLATE = Path(__file__).with_name("nginx.conf.j2")
STOP_WAIT_S = 10.0
WORKER_START_S = 120.0  # a worker's start replays the open round's bodies: allow for a large round
RESTART_DELAY_S = 1.0  # a worker that dies at once is not restarted in a tight loop
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# nginx's own refusals, as the app's JSON errors: (location, status, code, message, Retry-After s)
ERRORS = (
    ("bad_request", 400, "bad_request", "the HTTP request is malformed", None),
    ("method_not_allowed", 405, "method_not_allowed", "this method is not allowed here", None),
    ("request_timeout", 408, "request_timeout", "the request was not complete in time: send it again", None),
    ("headers_too_large", 431, "headers_too_large", "request headers are larger than the server limit",
     None),
    ("payload_too_large", 413, "payload_too_large", "request body is larger than the server limit "
                                                    "({max_body_bytes} bytes)", None),
    ("rate_limited", 429, "rate_limited", "too many requests or connections from this address: retry "
                                          "after Retry-After seconds", 1),
    ("unavailable", 503, "unavailable", "the server cannot answer now: retry later", 5),
)


@dataclass(frozen=True)
class Published:
    """What ``publish`` left in the public folder: files, and how many of them have a .gz beside."""

    files: int
    gzipped: int
    bytes: int
    gzip_bytes: int


def public_files(config) -> dict[str, Path]:
    """Files nginx serves itself, by path under the public root: every file /static/ serves (not
    node_modules, no dotfiles) and onnxruntime-web's page files under ort/. Any other path goes to
    the app, so leaving a file out never changes an answer.
    """
    root = Path(config["WEB_CLIENT_DIR"])
    files = {}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d.lower() != "node_modules" and not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            path = Path(folder, name)
            files[f"static/{path.relative_to(root).as_posix()}"] = path
    for name in web.ORT_PRECOMPRESS:
        path = root / web.ORT_DIST / name
        if path.is_file():
            files[f"ort/{name}"] = path
    return files


def publish(files: dict[str, Path], public: Path, compress: bool) -> Published:
    """Copy files into public (mtimes kept, so Last-Modified matches the app's) with a .gz beside
    each that the app would send gzipped; remove whatever else is there. Unchanged files are kept.
    """
    keep: set[Path] = set()
    counts = [0, 0, 0, 0]
    for relative, source in files.items():
        target = public / relative
        gz = target.with_name(target.name + ".gz")
        stat = source.stat()
        fresh = target.is_file() and (target.stat().st_size, target.stat().st_mtime_ns) == (
            stat.st_size, stat.st_mtime_ns)
        if not fresh:
            target.parent.mkdir(parents=True, exist_ok=True)
            _replace(target, source.read_bytes(), stat)
        keep.add(target)
        counts[0] += 1
        counts[2] += stat.st_size
        if not compress or source.suffix.lower() not in web.COMPRESSIBLE:
            continue
        if not (fresh and gz.is_file()):
            body = gzip.compress(source.read_bytes(), compresslevel=9, mtime=0)
            if len(body) > (1 - web.MIN_SAVING) * stat.st_size:  # as the app: not worth it, sent as it is
                continue
            _replace(gz, body, stat)
        keep.add(gz)
        counts[1] += 1
        counts[3] += gz.stat().st_size
    for path in sorted(public.rglob("*"), reverse=True):
        if path.is_file() and path not in keep or path.is_dir() and not any(path.iterdir()):
            path.unlink() if path.is_file() else path.rmdir()
    return Published(*counts)


def _replace(path: Path, body: bytes, stat: os.stat_result) -> None:
    """Write body to path atomically (nginx never sends half a file) with the source's times."""
    temp = path.with_name(f".tmp-{path.name}")
    temp.write_bytes(body)
    os.utime(temp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(temp, path)


def content_types(files: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """The ``types`` block: each published extension with the Content-Type the app sends for it."""
    by_type: dict[str, set[str]] = {}
    for path in files.values():
        suffix = path.suffix.lower()
        if suffix:
            mimetype = (web.MIMETYPES.get(suffix) or mimetypes.guess_type(path.name)[0]
                        or "application/octet-stream")
            by_type.setdefault(get_content_type(mimetype, "utf-8"), set()).add(suffix[1:])
    return sorted((mimetype, sorted(extensions)) for mimetype, extensions in by_type.items())


def render(config, prefix: Path, listen: tuple[str, int], upstreams: list[tuple[str, int]],
           files: dict[str, Path], max_body_bytes: int) -> str:
    """nginx.conf from the template and the app's settings."""
    host, port = listen
    user = None
    if os.geteuid() == 0:  # nginx's workers would be nobody, who cannot read a root-owned data dir
        user = f"{pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name}"
    errors = [(name, status, code, message.format(max_body_bytes=max_body_bytes), retry)
              for name, status, code, message, retry in ERRORS]
    assert not any(set("'$\\\"") & set(message) for _, _, _, message, _ in errors), "nginx would misread it"
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent),
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return environment.get_template(TEMPLATE.name).render(
        prefix=prefix, conf=prefix / "nginx.conf", body_dir=front_body_dir(config["DATA_DIR"]),
        body_file_header=BODY_FILE_HEADER, user=user, public=prefix / "public",
        listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}", upstreams=upstreams,
        types=content_types(files), isolation_headers=sorted(ISOLATION_HEADERS.items()),
        ort_max_age_s=web.ORT_MAX_AGE_S, max_body_bytes=max_body_bytes, errors=errors,
        header_timeout_s=_seconds(config["HEADER_TIMEOUT_S"]),
        body_timeout_s=_seconds(config["BODY_TIMEOUT_S"]), idle_timeout_s=_seconds(config["IDLE_TIMEOUT_S"]),
        upstream_idle_s=max(1, int(config["IDLE_TIMEOUT_S"] / 2)),
        connections_per_addr=config["FRONT_CONNECTIONS_PER_ADDR"],
        requests_per_s=f"{config['FRONT_REQUESTS_PER_ADDR_PER_S']:g}", burst=config["FRONT_BURST"])


def _seconds(value: float) -> int:
    """A timeout in whole seconds for nginx, at least 1."""
    return max(1, round(value))


class Nginx:
    """nginx in the foreground (``daemon off``) on a rendered config, as a child process."""

    def __init__(self, binary: str, prefix: Path):
        self.command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
        self.process: subprocess.Popen | None = None
        self.stopping = False

    def check(self) -> None:
        """``nginx -t``: raise RuntimeError with nginx's words if the config is refused."""
        result = subprocess.run([*self.command, "-t", "-q"], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"nginx refused {self.command[-1]}:\n{result.stderr.strip()}")

    def start(self, on_exit) -> None:
        """Start nginx in its own session (Ctrl-C reaches only us, and we stop it gracefully); call
        on_exit(returncode) from a thread if it ends before ``stop``.
        """
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, start_new_session=True,
                                        preexec_fn=_end_with_parent)

        def watch() -> None:
            """Wait for nginx; tell the caller if it ended on its own."""
            assert self.process is not None
            code = self.process.wait()
            if not self.stopping:
                on_exit(code)

        threading.Thread(target=watch, name="fedurl-nginx-watch", daemon=True).start()

    def stop(self) -> None:
        """Graceful stop (SIGQUIT: finish open requests), then SIGKILL after STOP_WAIT_S."""
        self.stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_WAIT_S)


class Workers:
    """The app processes beside this one (``fedurl-serve --front`` on 127.0.0.1, each on its own
    port), started again when one dies (a SIGKILL loses nothing: server/README.md, Several workers).
    """

    def __init__(self, command: list[str], count: int):
        self.command, self.stopping = command, False
        self.ports = [free_port("127.0.0.1") for _ in range(count)]
        self.processes: dict[int, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def start(self) -> list[tuple[str, int]]:
        """Start every worker and wait until each accepts connections; their (host, port)s.

        :raise RuntimeError: if one exits or does not listen within WORKER_START_S.
        """
        started = []
        for port in self.ports:
            started.append(threading.Event())
            threading.Thread(target=self._supervise, args=(port, started[-1]), name=f"fedurl-worker-{port}",
                             daemon=True).start()
        deadline = time.monotonic() + WORKER_START_S
        for port, spawned in zip(self.ports, started, strict=True):
            spawned.wait(WORKER_START_S)
            while not _accepts(port):
                if self.processes[port].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker on port {port} did not start (see its log above)")
                time.sleep(0.1)
        return [("127.0.0.1", port) for port in self.ports]

    def _supervise(self, port: int, spawned: threading.Event) -> None:
        """Run the worker of port, and again whenever it ends before ``stop``. The worker is started
        from this thread, which lives as long as the deployment: Linux's parent-death signal
        follows the thread that started a child, not the process.
        """
        while True:
            with self.lock:
                if self.stopping:
                    return
                process = subprocess.Popen([*self.command, "--port", str(port)], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, start_new_session=True,  # not Ctrl-C
                                           preexec_fn=_end_with_parent)
                self.processes[port] = process
            spawned.set()
            code = process.wait()
            if self.stopping:
                return
            logs.event("worker_exited", level=logging.ERROR, port=port, pid=process.pid, returncode=code)
            time.sleep(RESTART_DELAY_S)

    def stop(self) -> None:
        """SIGTERM every worker (waitress ends at once; a round being closed is redone by the next
        start, as after a crash), then SIGKILL what is left after STOP_WAIT_S.
        """
        with self.lock:
            self.stopping = True
            processes = list(self.processes.values())
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_WAIT_S)


def _accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port (a wildcard host: on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _end_with_parent() -> None:
    """In the child before exec: SIGTERM it when we die, even by SIGKILL (Linux), so no nginx is left
    holding the port.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: stopping relies on stop()
        pass


def prepare(app: Flask, nginx: Nginx, prefix: Path, listen: tuple[str, int],
            upstreams: list[tuple[str, int]]) -> Published:
    """Publish the page's files, render nginx.conf and have nginx check it."""
    for folder in ("proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / folder).mkdir(parents=True, exist_ok=True)
    bodies = front_body_dir(app.config["DATA_DIR"])
    bodies.mkdir(parents=True, exist_ok=True)
    for left in bodies.iterdir():  # uploads in flight when the last nginx stopped: no request owns them
        left.unlink()
    files = public_files(app.config)
    published = publish(files, prefix / "public", app.config["GZIP_CACHE_BYTES"] > 0)
    conf = render(app.config, prefix, listen, upstreams, files, app.config["MAX_CONTENT_LENGTH"])
    (prefix / "nginx.conf").write_text(conf)
    nginx.check()
    return published


def free_port(host: str) -> int:
    """A port free on host now (nginx cannot report the one it picked for port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; unknown options are errors."""
    parser = argparse.ArgumentParser(prog="fedurl-deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle imported as version 1 on first start (fedurl-export --out)")
    parser.add_argument("--data-dir", help="versions, spool, SQLite file and front/ (nginx) live here "
                                           "(default: the instance folder, <repo>/instance)")
    parser.add_argument("--db", help="SQLAlchemy database URL (default: sqlite:///DATA_DIR/fedurl.sqlite3)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface nginx listens on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="nginx's port; 0 picks a free one "
                                                               "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=8,
                        help="request threads of each app process (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="app processes behind nginx; more than 1 needs PostgreSQL (--db) "
                             "(default: %(default)s)")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx",
                        help="the nginx binary (default: %(default)s)")
    return parser.parse_args(argv)


def worker_command(args: argparse.Namespace, overrides: dict) -> list[str]:
    """fedurl-serve for one more worker with this command's bundle, data dir and database (the
    settings from the environment and instance/config.py reach it as they reach this process).
    """
    flags = {"BUNDLE_DIR": "--bundle", "DATA_DIR": "--data-dir", "DATABASE_URL": "--db"}
    given = [part for key, value in overrides.items() for part in (flags[key], value)]
    return [sys.executable, "-m", "server.cli", "--front", "--host", "127.0.0.1",
            "--threads", str(args.threads), *given]


def main(argv=None) -> None:
    """Start the app and nginx in front of it; stop both on Ctrl-C, SIGTERM, or nginx's end."""
    handle_ctrl_c()
    args = parse_args(argv)
    overrides = {key: value for key, value in
                 (("BUNDLE_DIR", args.bundle), ("DATA_DIR", args.data_dir), ("DATABASE_URL", args.db))
                 if value is not None}
    if args.workers < 1:
        raise SystemExit("fedurl-deploy: --workers must be at least 1")
    workers = Workers(worker_command(args, overrides), args.workers - 1)
    try:
        app = create_app({**overrides, "PROXY_HOPS": 1})
        trust_front_bodies(app)
        if args.workers > 1 and not db.shares_workers(db.get_engine(app)):
            raise ValueError(f"--workers {args.workers} needs PostgreSQL (--db postgresql://...): on SQLite "
                             "one process serves")
        server = make_server(app, "127.0.0.1", 0, args.threads)  # reachable through nginx only
        upstream = ("127.0.0.1", server.effective_port)
        listen = (args.host, args.port or free_port(args.host))
        prefix = Path(app.config["DATA_DIR"]).resolve() / FRONT_DIR
        nginx = Nginx(args.nginx, prefix)
        upstreams = [upstream, *workers.start()]
        published = prepare(app, nginx, prefix, listen, upstreams)
    except (RuntimeError, ValueError, OSError, db.DatabaseUnavailable) as exc:
        workers.stop()
        raise SystemExit(f"fedurl-deploy: {exc}") from None
    web.precompress(app)  # the model files /api/files serves, in the background
    failed = []

    def nginx_ended(code: int) -> None:
        """When nginx dies, stop the app too (SIGTERM to ourselves ends server.run)."""
        failed.append(code)
        logs.event("front_exited", level=logging.ERROR, returncode=code)
        os.kill(os.getpid(), signal.SIGTERM)

    def terminate(_signum, _frame) -> None:
        """SIGTERM: leave server.run as Ctrl-C does."""
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    nginx.start(nginx_ended)
    deadline = time.monotonic() + WORKER_START_S
    while not _accepts(listen[1], listen[0]):  # "listening" means a request gets through now
        if nginx.process is None or nginx.process.poll() is not None or time.monotonic() > deadline:
            workers.stop()
            raise SystemExit(f"fedurl-deploy: nginx did not start listening on {listen[0]}:{listen[1]}")
        time.sleep(0.05)
    url = f"http://{listen[0] if ':' not in listen[0] else f'[{listen[0]}]'}:{listen[1]}"
    logs.event("listening", url=url, app_url=f"http://{upstream[0]}:{upstream[1]}", front=str(prefix),
               workers=[f"http://{host}:{port}" for host, port in upstreams],
               version=app.extensions["fedurl.coordinator"].version, published_files=published.files,
               gzipped=published.gzipped, bytes=published.bytes, gzip_bytes=published.gzip_bytes)
    print(f"Open {url}  (dashboard: {url}/dashboard)", flush=True)
    try:
        server.run()
    finally:
        nginx.stop()
        workers.stop()
    if failed:
        raise SystemExit(f"fedurl-deploy: nginx exited with {failed[0]}")


if __name__ == "__main__":
    main()
