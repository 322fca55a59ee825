"""The tracking web (Starlette): `create_app(runtime, on_event=...)` in `app`, served by `server`."""
