"""Reference: the cheapest useful Flask endpoint (parse JSON, answer 200): the ingest ceiling."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/webhooks/<provider>/<token>")
def receive(provider: str, token: str):
    """Parse the body and answer, doing nothing else."""
    body = request.get_json()
    return jsonify(accepted=len(body.get("ids", [])) if isinstance(body, dict) else 0)
