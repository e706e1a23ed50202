"""The chat app: start-up time and keeping up with 100 incoming messages per second.

* Launch: ``tazcom chat`` in a real terminal (tmux, 80x24) on a node holding
  3000 room messages, until the newest one is on screen: the time to an
  interactive screen with history loaded, against the time ``tazcom history``
  takes to print the same history in the same run.
* Load: a second node posts room messages at 100/s for 10 s; the app (headless,
  Textual's run_test) shows them as the node delivers them. Figures: messages/s
  the app rendered against messages/s the node delivered on its bus in the same
  run, and input latency (a key press to the input line showing it) while the
  messages pour in, against an idle app.

    python -m bench.chat
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import time

from bench.meshlab import post_many
from bench.report import Figure, print_report
from tazcom.chat import ChatApp, MessageView
from tazcom.services.runtime import load_from_env
from tests.harness import BULK, BULK_NOTE, BusTap, Node, linked_pair, wait_for

RATE = 100
SECONDS = 10


def launch_time(node: Node) -> tuple[float, float]:
    newest = "history 2999"
    t0 = time.perf_counter()
    node.cli("history", "--limit", "3000")
    cli = time.perf_counter() - t0
    env = " ".join(f"{k}={v}" for k, v in node.env.items() if k.startswith("TAZCOM_"))
    tazcom = node.run(["which", "tazcom"]).stdout.strip()
    session = "tzbench"
    subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    t0 = time.perf_counter()
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                    f"env {env} {tazcom} chat"], check=True)
    try:
        wait_for(lambda: newest in subprocess.run(
            ["tmux", "capture-pane", "-t", session, "-p"], capture_output=True,
            text=True).stdout, 30, "the newest message on screen", interval=0.01)
        return time.perf_counter() - t0, cli
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


async def paced(node: Node, n: int, rate: float) -> None:
    t0 = time.perf_counter()
    for i in range(0, n, 10):
        await post_many(node, [f"load {j}" for j in range(i, i + 10)], in_flight=10)
        delay = t0 + (i + 10) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


def load(a: Node, b: Node) -> dict[str, float]:
    out: dict[str, float] = {}

    async def main() -> None:
        app = ChatApp(load_from_env(a.env))
        async with app.run_test(size=(80, 24)) as pilot:
            while app.ready_at is None:
                await pilot.pause(0.05)
            view = app.query_one(MessageView)

            async def key_latency() -> float:
                box = app.query_one("#input")
                samples = []
                for ch in "abcdefghij":
                    t0 = time.perf_counter()
                    await pilot.press(ch)
                    while not box.value.endswith(ch):
                        await pilot.pause(0)
                    samples.append(time.perf_counter() - t0)
                    await pilot.pause(0.05)
                await pilot.press("ctrl+u")
                return statistics.median(samples)

            out["idle_latency"] = await key_latency()
            tap = BusTap(a, "chat.message")
            base = len(view.messages)
            shown: list[float] = []
            original_add = view.add

            def add(msg):
                original_add(msg)
                if msg.text.startswith("load "):
                    shown.append(time.perf_counter())

            view.add = add  # type: ignore[method-assign]
            sender = asyncio.ensure_future(paced(b, RATE * SECONDS, RATE))
            t0 = time.perf_counter()
            busy = []
            while not sender.done():
                busy.append(await key_latency())
            await sender
            n = RATE * SECONDS
            while len(view.messages) - base < n and time.perf_counter() - t0 < 60:
                await pilot.pause(0.05)
            rendered = time.perf_counter() - t0
            arrivals = [t for t, e in tap.arrivals if e.text.startswith("load ")]
            tap.close()
            out["rendered_rate"] = len(shown) / (max(shown) - min(shown) + 1 / RATE)
            out["render_lag"] = rendered
            out["node_rate"] = len(arrivals) / (max(arrivals) - min(arrivals) + 1 / RATE) \
                if arrivals else 0
            out["busy_latency"] = statistics.median(busy)
            out["rendered"] = len(view.messages) - base

    asyncio.run(main())
    return out


def main() -> None:
    if shutil.which("tmux") is None:
        raise SystemExit("skipped: needs tmux")
    with linked_pair("bench-a", "bench-b", config=BULK) as (a, b):
        for i in range(0, 3000, 500):
            asyncio.run(post_many(a, [f"history {j}" for j in range(i, i + 500)]))
        startup, cli = launch_time(a)
        figures = load(a, b)
    print_report("tazcom chat", [
        Figure("launch to interactive screen, 3000 messages of history", startup, "s", cli,
               "`tazcom history` of the same", "report"),
        Figure(f"messages/s rendered at {RATE}/s incoming", figures["rendered_rate"], "msg/s",
               figures["node_rate"], "node delivered on its bus", "keep up (>= 0.95)",
               figures["rendered_rate"] >= 0.95 * figures["node_rate"]),
        Figure("messages rendered of 1000 sent", figures["rendered"], "msg", 1000, "sent",
               "all", figures["rendered"] == 1000),
        Figure("input latency while messages pour in (median)",
               figures["busy_latency"] * 1000, "ms", figures["idle_latency"] * 1000,
               "idle app", "report"),
    ])
    print(BULK_NOTE)


if __name__ == "__main__":
    main()
