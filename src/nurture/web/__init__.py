"""The tracking web (Starlette): `create_app(runtime)` in `app`, served by `server.build_server`."""
