#!/usr/bin/env python3
"""Prints PROOF.md's "Last run" tables from the figures a proof run leaves in
target/proof/*.json: `python3 tests/proof/table.py [target/proof]`.

The broker tables show each scenario under the engine's default group setup;
the rebalancing scenarios (5, 8) also run on Apache Kafka under each setup
(`apache-5-rebalance-eager.json`, …), compared in a table of their own."""
import json
import pathlib
import sys

SCENARIOS = {
    "1-api-sigkill": ("API SIGKILL during a burst", "2 API, 2 workers",
                      "one API SIGKILLed at 2 s (of 5 s of creations at 60/s), replaced 2 s later"),
    "2-worker-sigkill": ("worker SIGKILL mid-batch", "1 API, 2 workers",
                         "one worker SIGKILLed at 3 s, restarted 3 s later"),
    "3-kafka-outage": ("Kafka unavailable 30 s", "1 API, 2 workers",
                       "mock: `broker_down` at 3 s, `broker_up` 30 s later; Apache: every node stopped at 3 s, restarted 30 s later"),
    "4-postgres-cut": ("PostgreSQL cut 10 s", "2 API, 2 workers",
                       "proxy closes every connection and refuses new ones for 10 s"),
    "5-rebalance": ("forced rebalances", "1 API, 1→3 workers",
                     "+1 worker at 2 s and 4 s, oldest SIGTERMed at 6 s, next SIGKILLed at 8 s, +1 at 9 s"),
    "6-duplicate-delivery": ("duplicate delivery", "1 API, 2 workers",
                     "at 4 s every event on the topic so far produced again byte for byte"),
    "7-poison": ("poison interleaved", "1 API, 2 workers",
                 "30 poison messages among the orders (bad JSON, unknown order, missing order id)"),
    "8-rolling-restart": ("rolling restart", "2 API, 2 workers",
                          "every original process in turn: SIGTERM (exit 0 asserted), replacement started"),
    "9-leader-sigkill": ("partition leader SIGKILL", "1 API, 2 workers",
                         "the busy partition's leader SIGKILLed at 3 s, restarted 20 s later"),
    "10-broker-cut": ("broker cut off 20 s", "1 API, 2 workers",
                      "the clients' connections to the busy partition's leader cut at 3 s for 20 s (a proxy); replication untouched"),
    "11-one-node-left": ("down to one node 20 s", "1 API, 2 workers",
                         "the two nodes that do not lead the busy partition SIGKILLed at 3 s, restarted 20 s later"),
    "12-topic-loss": ("orders topic's messages lost", "1 API, 2 workers",
                      "twice, from 3 s: workers SIGTERMed, their unconsumed events lost 2 s later (Apache: "
                      "records deleted to each partition's end; mock: group offsets committed at the end), "
                      "workers back; reconciler stuck after 5 s, sweep every 1 s"),
}

# The group setups of the rebalancing comparison (issue #23): the name's
# suffix and figures' `group_setup`, and its label. The cooperative run keeps
# the plain scenario name (it is the default).
SETUPS = [
    ("eager", "eager (classic, `range`)"),
    ("cooperative", "cooperative (classic, `cooperative-sticky`)"),
    ("kip848", "KIP-848 (`group.protocol=consumer`)"),
]

BROKERS = [
    ("mock", "librdkafka mock cluster"),
    ("apache", "Apache Kafka 4.4.0, 3 KRaft nodes, RF 3, min.insync.replicas 2"),
]


def number(name):
    return int(name.split("-", 1)[0])


def split_setup(name, figures):
    """(scenario, setup): `5-rebalance-eager` is scenario 5 under eager; a
    name without a setup's suffix runs under `group_setup`, or the default."""
    for setup, _ in SETUPS:
        if name.endswith(f"-{setup}") and name[: -len(setup) - 1] in SCENARIOS:
            return name[: -len(setup) - 1], setup
    return name, figures.get("group_setup")


def ms(value):
    return "–" if value is None else f"{value / 1000:.2f} s"


def rebalancing_table(rows):
    """Scenario × group setup on Apache Kafka: the step delays and the
    partitions that moved (reported, not asserted), and the guarantees."""
    compared = {}
    for name, f in rows:
        scenario, setup = split_setup(name, f)
        if setup is not None:
            compared[(scenario, setup)] = f
    if not compared:
        return
    order = [setup for setup, _ in SETUPS]
    labels = dict(SETUPS)
    print("### Rebalancing under each group setup, Apache Kafka 4.4.0\n")
    print("Step delays: Pending → Reserved, Paid → AwaitingShipment, Shipped → Fulfilled. "
          "A partition moved when the workers' logs show it assigned more than once "
          "(under eager every rebalance assigns every partition again). "
          "p99, unmoved: the steps of orders whose partition never moved; "
          "p99, undisturbed: the steps that began once the order's partition had an owner "
          "and during which it did not move. Reported, not asserted.\n")
    print("| # | scenario | group setup | accepted | max delay | p99 all | p99 unmoved (steps) "
          "| p99 undisturbed (steps) | partitions moved | moves | lost | duplicated effects "
          "| out of order | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (scenario, setup), f in sorted(
            compared.items(),
            key=lambda r: (number(r[0][0]), order.index(r[0][1]) if r[0][1] in order else len(order))):
        label = SCENARIOS.get(scenario, (scenario,))[0]
        print(f"| {number(scenario)} | {label} | {labels.get(setup, setup)} | {f['accepted']} | "
              f"{f['max_delay_ms'] / 1000:.1f} s | {ms(f.get('p99_delay_ms'))} | "
              f"{ms(f.get('p99_delay_unmoved_ms'))} ({f.get('unmoved_steps', '–')}) | "
              f"{ms(f.get('p99_delay_undisturbed_ms'))} ({f.get('undisturbed_steps', '–')}) | "
              f"{f.get('partitions_moved', '–')} | {f.get('partition_moves', '–')} | "
              f"{f['lost']} | {f['duplicated_effects']} | {f['out_of_order']} | {f['seconds']:.0f} s |")
    print()


def main():
    directory = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/proof")
    compared = []
    for broker, title in BROKERS:
        rows = []
        for path in directory.glob(f"{broker}-*.json"):
            figures = json.loads(path.read_text())
            name = path.stem[len(broker) + 1:]
            if broker == "apache":
                compared.append((name, figures))
            # The broker's table: every scenario under the default group
            # setup (cooperative-sticky); eager and KIP-848 runs go to the
            # rebalancing table only.
            if split_setup(name, figures)[0] == name:
                rows.append((name, figures))
        if not rows:
            continue
        print(f"### {title}\n")
        print("| # | scenario | processes | fault | accepted | fulfilled | lost | duplicated effects "
              "| out of order | poison in DLQ | redelivered | re-driven | max delay | wall |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, f in sorted(rows, key=lambda r: number(r[0])):
            label, processes, fault = SCENARIOS.get(name, (name, "?", "?"))
            poison = f"{f['poison_dead_lettered']}/{f['poison_sent']}" if f["poison_sent"] else "–"
            print(f"| {number(name)} | {label} | {processes} | {fault} | {f['accepted']} | "
                  f"{f['fulfilled']} | {f['lost']} | {f['duplicated_effects']} | "
                  f"{f['out_of_order']} | {poison} | {f['redelivered']} | {f.get('redriven', '–')} | "
                  f"{f['max_delay_ms'] / 1000:.1f} s | {f['seconds']:.0f} s |")
        print()
    rebalancing_table(compared)


if __name__ == "__main__":
    main()
