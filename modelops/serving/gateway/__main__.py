"""``python -m modelops.serving.gateway [--host H] [--port N]``: the gateway on uvicorn (uvloop + httptools).

Configuration comes from the ``MODELOPS_GATEWAY_*`` settings and S3 access from ``AWS_*`` (see
:mod:`modelops.serving.gateway.config`); the default port is 9000 shifted by ``MODELOPS_PORT_OFFSET``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

DEFAULT_PORT = 9000


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, build the app and serve until interrupted."""
    from modelops.settings import Settings, SettingsError

    parser = argparse.ArgumentParser(prog="python -m modelops.serving.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port (default {DEFAULT_PORT} + MODELOPS_PORT_OFFSET)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--access-log", action="store_true", help="log every request (paths only, never keys)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from modelops.serving.gateway.app import create_app
    from modelops.serving.gateway.config import GatewayConfig

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    port = args.port if args.port is not None else DEFAULT_PORT + settings.stack.port_offset
    config = GatewayConfig.from_settings(settings)
    app = create_app(config)
    # connections and tasks beyond twice the admitted requests get uvicorn's 503 before any work (the app answers
    # 429 at max_in_flight itself); 0 = no cap, as the setting says
    limit = 2 * config.max_in_flight or None
    uvicorn.run(app, host=args.host, port=port, loop="uvloop", http="httptools", lifespan="on",
                access_log=args.access_log, log_level=args.log_level, server_header=False, limit_concurrency=limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
