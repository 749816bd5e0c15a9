"""Drive the web chat page in headless Chromium: type a message, wait for the streamed reply, clear.

Starts `lmforge serve`'s app in this process on 127.0.0.1 (a free port), opens http://.../ in
Debian's chromium through selenium + chromedriver, checks that

  1. the page loads and shows the model's name (GET /v1/models worked);
  2. a typed message (Enter sends) appears as a user bubble and an assistant reply streams in
     (the bubble is filled and loses its "pending" cursor);
  3. a sampling setting is sent (max tokens = 12 caps the reply) and "Clear conversation" empties it;
  4. a request the server refuses (max tokens beyond the context) shows the server's message;
  5. against a server started with an API key, the page asks for the key (a wrong one is asked
     for again), then shows the model and streams a reply;

and saves a screenshot after the reply. Exit status 0 = all checks passed.

  sudo apt-get install -y chromium chromium-driver && pip install selenium
  python scripts/chat_page_check.py --model runs/shakespeare/sft --screenshot docs/img/chat-page.png
  python scripts/chat_page_check.py            # no --model: a random tiny model (gibberish replies)
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1200,800",
]


def tiny_model():
    """A random 2-layer model and a tokenizer trained on two plays (seconds, no files needed)."""
    import torch

    from lmforge.data.embedded import embedded_documents
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import Tokenizer

    texts = [text[:50_000] for _, text in embedded_documents("shakespeare")[:2]]
    tok = Tokenizer.train(texts, vocab_size=512, workers=1, progress=False)
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=256, init_std=0.08
    )
    return Transformer(cfg).eval(), tok


def start_server(model, tokenizer, name: str, api_key: str | None = None):
    import uvicorn

    from lmforge.serve.app import create_app
    from lmforge.serve.config import ServerConfig

    app = create_app(model, tokenizer, ServerConfig(model_name=name, api_key=api_key))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets NODELAY
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}/"


def check_api_key(driver, wait, check, model, tok, name: str) -> None:
    """Step 5: a server that needs a key; the page asks for it until the right one is given."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server, thread, url = start_server(model, tok, name, api_key="page-check-key")
    try:
        driver.execute_script("sessionStorage.clear()")
        driver.get(url)
        dialog = driver.find_element(By.ID, "key-dialog")
        wait.until(lambda d: dialog.get_attribute("open") is not None)
        check(True, "the page asks for the API key: " + driver.find_element(By.ID, "key-reason").text)
        driver.find_element(By.ID, "key-input").send_keys("wrong-key", Keys.ENTER)
        wait.until(
            lambda d: "refused" in d.find_element(By.ID, "key-reason").text and dialog.get_attribute("open")
        )
        check(True, "a wrong key is asked for again")
        box = driver.find_element(By.ID, "key-input")
        box.clear()
        box.send_keys("page-check-key", Keys.ENTER)
        wait.until(lambda d: name in d.find_element(By.ID, "model-name").text)
        check(dialog.get_attribute("open") is None, "the right key closes the dialog and the model is shown")
        driver.find_element(By.ID, "input").send_keys("hello", Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant:not(.pending), .msg.error"))
        check(not driver.find_elements(By.CSS_SELECTOR, ".msg.error"), "a reply streams in with the key")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="checkpoint/run directory (default: a random tiny model)")
    ap.add_argument("--message", default="Who speaks first in Hamlet?", help="the message to type")
    ap.add_argument("--screenshot", default="chat-page.png", help="where to save the screenshot (PNG)")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="browser binary")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver", help="driver binary")
    ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for the reply")
    args = ap.parse_args()

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    if args.model:
        from lmforge.checkpoint.consolidated import load_model

        model, tok = load_model(args.model)
        name = Path(args.model).name
    else:
        model, tok = tiny_model()
        name = "tiny-random"
    server, thread, url = start_server(model, tok, name)
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(args.chromedriver), options=options)
    failures = []

    def check(ok: bool, what: str) -> None:
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    try:
        wait = WebDriverWait(driver, args.timeout)
        driver.get(url)
        wait.until(lambda d: name in d.find_element(By.ID, "model-name").text)
        check(True, f"page loaded, model name shown: {driver.find_element(By.ID, 'model-name').text!r}")
        box = driver.find_element(By.ID, "max_tokens")
        box.clear()
        box.send_keys("12")
        driver.find_element(By.ID, "input").send_keys(args.message, Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant:not(.pending), .msg.error"))
        errors = driver.find_elements(By.CSS_SELECTOR, ".msg.error")
        check(not errors, "no error bubble" + (f" (got {errors[0].text!r})" if errors else ""))
        user = driver.find_elements(By.CSS_SELECTOR, ".msg.user .content")
        check([u.text for u in user] == [args.message], "the typed message is shown as the user's turn")
        replies = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .content")
        reply = replies[0].get_attribute("textContent") if replies else ""
        check(len(reply) > 0, f"an assistant reply streamed in: {reply!r}")
        stats = driver.find_element(By.ID, "stats").text
        check("chunks" in stats, f"streaming stats shown: {stats!r}")
        check(len(tok.encode_ordinary(reply)) <= 12 + 2, "the max-tokens setting capped the reply")
        Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(args.screenshot)
        print(f"screenshot: {args.screenshot}")
        driver.find_element(By.ID, "clear").click()
        check(not driver.find_elements(By.CSS_SELECTOR, ".msg"), "Clear conversation empties the chat")
        box.clear()
        box.send_keys("100000")  # more than the context: the server answers 400, the page shows it
        driver.find_element(By.ID, "input").send_keys("hello", Keys.ENTER)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.error"))
        error = driver.find_element(By.CSS_SELECTOR, ".msg.error .content").text
        check("context" in error, f"a server error is shown to the user: {error!r}")
        check_api_key(driver, wait, check, model, tok, name)
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
