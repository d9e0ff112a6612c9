"""A small real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol, for tests.

It answers deterministically from the prompt: QA requests get JSON pairs built from the section's sentences,
summary/rewrite requests get text, rubric requests get {"score": 10} when the candidate equals the reference and
{"score": 2} otherwise. `fail_first` makes the first requests fail (500, then 429) before it answers; `no_json`
refuses response_format like servers without JSON mode.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    def __init__(self, fail_first: int = 0, no_json: bool = False) -> None:
        self.fail_first = fail_first
        self.no_json = no_json
        self.requests: list[dict] = []
        self.retry_counts: list[str | None] = []  # the openai client's x-stainless-retry-count header per request
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server.lock:
                    server.requests.append(body)
                    server.retry_counts.append(self.headers.get("x-stainless-retry-count"))
                    n = len(server.requests)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if not self.path.endswith("/chat/completions"):
                        return self._send(404, {"error": {"message": "not found"}})
                    if n <= server.fail_first:
                        code = 500 if n % 2 == 1 else 429
                        return self._send(code, {"error": {"message": f"planned failure {n}", "type": "server"}})
                    if server.no_json and "response_format" in body:
                        return self._send(400, {"error": {"message": "response_format not supported"}})
                    time.sleep(0.02)  # lets concurrent requests overlap
                    text = reply(body["messages"][-1]["content"])
                    return self._send(200, {
                        "id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model", "test"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(prompt: str) -> str:
    if "Reference answer:" in prompt:
        ref = re.search(r"Reference answer: (.*)", prompt).group(1).strip()
        cand = re.search(r"Candidate answer: (.*)", prompt).group(1).strip()
        return json.dumps({"score": 10 if ref == cand else 2, "reason": "compared"})
    if "question-answer pairs" in prompt:
        n = int(re.search(r"Write (\d+) different", prompt).group(1))
        section = prompt.split("Document section:\n", 1)[1].split("\n\nWrite ", 1)[0]
        sents = [s for s in re.split(r"(?<=\.)\s+", section) if s]
        pairs = [{"question": f"What does the text say in sentence {i + 1} ({' '.join(s.split()[:2])})?", "answer": s}
                 for i, s in enumerate(sents[:n])]
        return json.dumps({"pairs": pairs})
    if "Write a summary" in prompt:
        return "Summary: " + prompt.split("Document:\n", 1)[1].split(".")[0] + "."
    if prompt.startswith("Rewrite this question"):  # a paraphrase: the same name, other words
        q = prompt.split("Question: ", 1)[1].strip()
        return "Could you tell me: " + q[0].lower() + q[1:]
    if prompt.startswith("Rewrite"):
        return "Rewritten: " + prompt.split('":\n', 1)[1].split("\n\nReply with")[0]
    return "ok"
