"""A separate writer process for the concurrency test: accepts N messages, prints ticket numbers."""

import asyncio
import sys

from factories import make_message
from paidan.db import make_engine
from router.intake import Intake


async def main(url: str, worker: int, n: int) -> None:
    intake = Intake(make_engine(url), max_batch=16)
    def message(w: int, i: int):  # a topic of its own each, so none threads onto another's ticket
        return make_message(f"w{w}-{i}", email=f"w{w}c{i % 5}@example.com", text=f"工单 {w}-{i}: 问题 {(w * 1000 + i) * 7919}")

    mine = [message(worker, i) for i in range(n)]
    shared = [message(0, i) for i in range(10)]
    receipts = await asyncio.gather(*(intake.accept(m) for m in mine + shared))
    intake.close()
    print("\n".join(r.ticket_number for r in receipts))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
