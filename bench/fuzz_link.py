"""An authenticated fuzzer against a real node, for as long as you like.

    python -m bench.fuzz_link [--frames 1000000] [--seconds 3600] [--seed 1]

Two loopback nodes (``TAZCOM_INTERFACES=lo``, their own mDNS service type, so
no other node on this host joins): ``target`` and its honest neighbour. A
verified peer (tests/linkfuzz.py, the harness of
tests/integration/test_link_fuzz.py) sends ``--frames`` mutated frames over
authenticated links to the target, reconnecting whenever it closes one: random
plaintext, msgpack of wrong shapes, link and router messages with fields of
the wrong type, mutated and forged envelopes, DMs out of bounds, legit
messages among bad entries, abusive sequences. The run stops after the
frames or ``--seconds``, whichever comes first. Printed beside their limits:
frames and frames/s, links the node closed by reject code (and without a
``close``: must be 0), what its router refused, tracebacks (0), restarts (0),
forged messages shown (0), PSS growth of each service, and whether the
node still chats afterwards.
"""

from __future__ import annotations

import argparse
import sys

from bench.report import Figure, print_report
from tests.linkfuzz import FuzzResult, fuzz_node, isolated_pair, known_code

#: PSS growth allowed to each service over a run (after a warm-up run).
GROWTH_MIB = 32.0


def progress(r: FuzzResult) -> None:
    print(f"  ... {r.frames:,} frames, {r.sessions:,} links, {r.identities} identities",
          file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with isolated_pair() as (target, honest):
        fig = fuzz_node(target, honest, args.frames, args.seconds, seed=args.seed,
                        progress=progress)
    r = fig.result
    closed = sum(r.closes.values())
    no_close = sum(r.no_close.values())
    node_side = fig.no_close_node
    lost = sum(n for reason, n in node_side.items() if known_code(reason))
    uncoded = no_close - lost
    figures = [
        Figure("frames sent", r.frames, "frames", args.frames, "asked", "all", r.frames >=
               args.frames),
        Figure("frames per second", r.frames / r.seconds, "frames/s"),
        Figure("links (handshakes completed)", r.sessions, "links"),
        Figure("identities (new after a refusal)", r.identities, "ids"),
        Figure("links the node closed, with a close", closed, "links"),
    ]
    figures += [Figure(f"  {code}", n, "links", None, "", "a reject code", known_code(code))
                for code, n in r.closes.most_common()]
    figures += [
        Figure("links that ended without a close at the fuzzer", no_close, "links"),
        Figure("  the node closed them with a code (link.down; the close was lost to a TCP "
               "reset, as the fuzzer was still sending)", lost, "links"),
        Figure("  the node ended them without a code (connection_lost, or no link.down)",
               uncoded, "links", 0, "limit", "0", uncoded == 0),
        Figure("fatal frames the node did not answer", sum(r.unanswered.values()), "frames",
               0, "limit", "0", not r.unanswered),
        Figure("links we ended (close, broken stream)", r.ours, "links"),
        Figure("handshakes refused", sum(r.refused.values()), "links"),
    ]
    figures += [Figure(f"  {why}", n, "links") for why, n in r.refused.most_common()]
    figures += [
        Figure("router messages and envelopes refused", fig.router_dropped, "items"),
        Figure("envelopes the router accepted (its state grows with these)", fig.accepted,
               "envelopes"),
        Figure("  reject codes among them (router.dropped)", len(fig.router_codes), "codes"),
        Figure("  reject codes in wire.rejected", len(fig.wire_rejected), "codes"),
        Figure("legit envelopes signed by the fuzzer", len(r.legit), "envelopes"),
        Figure("tracebacks in any log", len(fig.tracebacks), "", 0, "limit", "0",
               not fig.tracebacks),
        Figure("services restarted", len(fig.restarts), "", 0, "limit", "0", not fig.restarts),
        Figure("forged messages shown", len(fig.forged), "", 0, "limit", "0", not fig.forged),
        Figure("the node still chats afterwards (with a new peer)", int(fig.chats_after), "",
               1, "goal", "yes", fig.chats_after),
    ]
    figures += [Figure(f"  {way}", int(ok), "", None, "", "report") for way, ok in
                fig.delivered.items()]
    for service, kib in sorted(fig.growth_kib.items()):
        mib = kib / 1024
        figures.append(Figure(f"PSS growth: {service} (from "
                              f"{fig.pss_before[service] / 1024:.1f} MiB)", mib, "MiB",
                              GROWTH_MIB, "limit", f"< {GROWTH_MIB:g} MiB", mib < GROWTH_MIB))
    print_report(f"authenticated link fuzz: {r.frames:,} frames in {r.seconds:.0f} s", figures)
    print("router.dropped codes:", ", ".join(sorted(fig.router_codes)))
    print("wire.rejected codes:", ", ".join(sorted(fig.wire_rejected)))
    print("frames by kind:", ", ".join(f"{k} {n:,}" for k, n in r.by_label.most_common()))
    for tb in fig.tracebacks[:3]:
        print(tb[-3000:], file=sys.stderr)
    if fig.forged:
        print("forged:", fig.forged[:5], file=sys.stderr)


if __name__ == "__main__":
    main()
