"""fedurl-serve: run the aggregation server with waitress (a production WSGI server, threads).

    fedurl-serve --bundle bundles/default [--data-dir DIR] [--db URL] [--host H --port P]

Flags override FEDURL_* environment variables and instance/config.py (server/README.md).
``flask --app server.app run`` serves the same app with Flask's development server.
"""

from __future__ import annotations

import argparse

import waitress

from server import logs
from server.app import create_app


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; unknown options are errors."""
    parser = argparse.ArgumentParser(prog="fedurl-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="bundle imported as version 1 on first start (fedurl-export --out)")
    parser.add_argument("--data-dir", help="where versions and the SQLite file live (default: the instance folder, <repo>/instance)")
    parser.add_argument("--db", help="SQLAlchemy database URL (default: sqlite:///DATA_DIR/fedurl.sqlite3)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=8, help="request threads (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Create the app and serve it until interrupted."""
    args = parse_args(argv)
    overrides = {key: value for key, value in
                 (("BUNDLE_DIR", args.bundle), ("DATA_DIR", args.data_dir), ("DATABASE_URL", args.db))
                 if value is not None}
    try:
        app = create_app(overrides)
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"fedurl-serve: {exc}") from None
    # waitress buffers whole bodies before the app sees them; past twice the app's own limit it
    # answers 413 itself (plain text), below that the app answers 413 as JSON.
    server = waitress.create_server(app, host=args.host, port=args.port, threads=args.threads,
                                    max_request_body_size=2 * app.config["MAX_CONTENT_LENGTH"])
    url = f"http://{args.host}:{server.effective_port}"
    logs.event("listening", url=url, version=app.extensions["fedurl.coordinator"].version)
    print(f"Open {url}  (dashboard: {url}/dashboard)", flush=True)  # for people, beside the JSON logs
    server.run()


if __name__ == "__main__":
    main()
