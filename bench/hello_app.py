"""The baseline app: Flask's hello world with no limiter and no metrics."""

from flask import Flask


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/")
    def index() -> dict[str, str]:
        return {"message": "hello world!"}

    return app


app = create_app()
