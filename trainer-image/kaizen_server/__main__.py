"""``python -m kaizen_server``: read the environment (see :class:`kaizen_server.app.Settings`), open the port, load
the model in the background (``GET /health`` answers 503 until it is loaded, then 200), with the adapters
``KAIZEN_ADAPTERS_FILE`` names, then watch that file, and serve until SIGTERM.

A missing or unloadable model is one line on stderr and exit code 2 (retrying cannot fix it), never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from kaizen_server.settings import Settings

EXIT_INVALID = 2
log = logging.getLogger("kaizen_server")


def fail(message: str) -> int:
    print(f"kaizen-server: {message}", file=sys.stderr)
    return EXIT_INVALID


async def serve(settings: Settings) -> int:
    from kaizen_server.app import Server, create_app

    server = Server(settings)
    runner = web.AppRunner(create_app(server), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
    except OSError as error:
        await runner.cleanup()
        return fail(f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("Listening host=%s port=%d model=%s version=%s track=%s", settings.host, settings.port, settings.name,
             settings.version, settings.track)
    loading = asyncio.ensure_future(server.load())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        try:
            engine = loading.result()
        except Exception as error:  # noqa: BLE001 - any failure to load is the same one line for the user
            await runner.cleanup()
            return fail(f"cannot serve MODEL_URI={settings.model_uri}: {error}")
        log.info("Loaded model uri=%s base=%s task=%s device=%s positions=%d threads=%d", settings.model_uri,
                 engine.base_uri, engine.task, engine.device.name, engine.positions, engine.threads)
        # A mounted ConfigMap changes in place: the adapters it names are loaded and unloaded as it does.
        watching = asyncio.ensure_future(server.watch()) if settings.adapters_file is not None else None
        await stopping
        if watching is not None:
            watching.cancel()
    log.info("Stopping")
    await runner.cleanup()
    return 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as error:
        return fail(str(error))
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
