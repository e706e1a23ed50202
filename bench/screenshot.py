"""Make docs/chat.svg: the chat app on 80x24, two nodes talking (python -m bench.screenshot)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tazcom.chat import ChatApp, MessageView
from tazcom.services.runtime import load_from_env
from tests.harness import linked_pair

OUT = Path(__file__).resolve().parents[1] / "docs" / "chat.svg"


def main() -> None:
    with linked_pair("alice", "bob") as (a, b):
        b.cli("say", "the generator is back on, tea in the kitchen")
        a.cli("say", "on my way")
        b.cli("send", "alice", "can you bring the long cable?")
        a.cli("send", "bob", "yes, five minutes")

        async def shoot() -> None:
            app = ChatApp(load_from_env(a.env))
            async with app.run_test(size=(80, 24)) as pilot:
                while app.ready_at is None or len(app.query_one(MessageView).messages) < 2:
                    await pilot.pause(0.05)
                await pilot.press("ctrl+n")
                await pilot.pause(0.5)
                await pilot.press(*"see you there", "enter")
                await pilot.pause(1.0)
                app.save_screenshot(str(OUT))

        asyncio.run(shoot())
        print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
