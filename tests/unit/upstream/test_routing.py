"""The routing policies on their own: prompt blocks and their hashes, the prefix table, the
load bound, session affinity, replicas that are down, tried or gone, the table's bound;
and the pieces of discovery that need no network (URLs per address, vLLM's load figures)."""

from __future__ import annotations

import pytest

from llm_service.upstream.discovery import replica_urls, reported_load
from llm_service.upstream.failover import Replica, ReplicaSet
from llm_service.upstream.routing import (
    LeastInflight,
    PrefixAffinity,
    RouteKey,
    block_hashes,
    make_policy,
    prompt_text,
)

BLOCK = 64
SYSTEM = "You answer questions about the documents below. " * 8  # several blocks


def replicas(count: int = 3) -> list[Replica]:
    return [
        Replica(f"http://r{i}:8000", f"http://r{i}:8000/v1/chat/completions") for i in range(count)
    ]


def chat(*contents: str, user: str | None = None) -> dict[str, object]:
    roles = ["system", "user", "assistant"]
    payload: dict[str, object] = {
        "messages": [{"role": roles[i % 3], "content": c} for i, c in enumerate(contents)]
    }
    if user is not None:
        payload["user"] = user
    return payload


def policy(**kw: float) -> PrefixAffinity:
    return PrefixAffinity(block_chars=BLOCK, **kw)  # type: ignore[arg-type]


def route(p: PrefixAffinity, reps: list[Replica], payload: dict[str, object],
          tried: list[Replica] | None = None, session: str | None = None, now: float = 0.0
          ) -> Replica:  # fmt: skip
    return p.pick(reps, tried or [], p.key(payload, session), now)


# --- the prompt and its blocks ------------------------------------------------------------


def test_prompt_text_keeps_roles_apart_and_reads_parts_and_completions() -> None:
    a = prompt_text(
        {"messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}]}
    )
    b = prompt_text({"messages": [{"role": "user", "content": "AB"}]})
    assert a != b and "A" in a and "B" in a
    text_parts = [
        {"type": "text", "text": "x"},
        {"type": "image_url", "image_url": {}},
        {"type": "text", "text": "y"},
    ]
    parts = {"messages": [{"role": "user", "content": text_parts}]}
    assert prompt_text(parts).endswith("xy")
    assert prompt_text({"prompt": "plain"}) == "plain"
    assert prompt_text({"prompt": ["first", "second"]}) == "first"
    assert prompt_text({}) == ""


def test_block_hashes_are_chained_and_leave_out_a_partial_block() -> None:
    text = "x" * (3 * BLOCK + 10)
    hashes = block_hashes(text, BLOCK)
    assert len(hashes) == 3
    assert len(set(hashes)) == 3  # equal blocks at different depths differ: the chain
    longer = block_hashes(text + "y" * BLOCK, BLOCK)
    assert longer[:3] == hashes  # a shared prefix shares its hashes
    changed = block_hashes("z" + text[1:], BLOCK)
    assert not set(changed) & set(hashes)  # a change in block 0 changes every later hash


def test_a_prompt_shorter_than_a_block_has_no_key() -> None:
    p = policy()
    assert p.key(chat("Hi"), None) is None
    assert LeastInflight().key(chat(SYSTEM, "q"), "session") is None


# --- prefix affinity ----------------------------------------------------------------------


def test_same_prefix_goes_to_the_same_replica_and_others_spread() -> None:
    p, reps = policy(), replicas()
    first = route(p, reps, chat(SYSTEM, "question one"))
    for i in range(10):
        assert route(p, reps, chat(SYSTEM, f"question {i} " * 5)) is first
    others = {route(p, reps, chat(f"document {i} " * 30, "q")) for i in range(6)}
    assert len(others) == 3  # unknown prefixes go to the least loaded, taking turns


def test_the_deepest_known_prefix_wins() -> None:
    p, reps = policy(), replicas()
    conversation = [SYSTEM, "doc A " * 40, "answer " * 20]
    deep = route(p, reps, chat(*conversation))
    # A prompt sharing only the system prompt would go to `deep` too; `deep` is busy.
    deep.in_flight = 10
    other = route(p, reps, chat(SYSTEM, "doc B " * 40))
    assert other is not deep
    deep.in_flight = 0
    # the system prompt's blocks now name `other`; the conversation's deeper ones `deep`
    assert route(p, reps, chat(SYSTEM, "doc C " * 40)) is other
    assert route(p, reps, chat(*conversation, "follow-up " * 10)) is deep
    # ... and routing the conversation there rewrote only its blocks from the deepest known
    # one on: the system prompt's last block still names `other`, which holds it too
    assert route(p, reps, chat(SYSTEM, "doc D " * 40)) is other


def test_a_prefix_covering_less_than_min_match_does_not_route() -> None:
    p, reps = policy(min_match=0.5), replicas()
    # The shared system prompt is a third of each prompt: documents spread as if unknown.
    chosen = [route(p, reps, chat(SYSTEM, f"document {i} " * 80)) for i in range(6)]
    assert len(set(chosen)) == 3
    # With no minimum, the system prompt alone pulls them all to one replica.
    q, reps = policy(min_match=0.0), replicas()
    assert len({route(q, reps, chat(SYSTEM, f"document {i} " * 80)) for i in range(6)}) == 1


def test_an_overloaded_owner_is_passed_over_for_the_least_loaded() -> None:
    p, reps = policy(balance=1.5, slack=2), replicas()
    owner = route(p, reps, chat(SYSTEM, "q"))
    owner.in_flight = 3  # mean 1: bound max(1.5, 3) = 3: still in bounds
    assert route(p, reps, chat(SYSTEM, "q2")) is owner
    owner.in_flight = 4  # mean 4/3: bound max(2, 3.33): over it
    others = [r for r in reps if r is not owner]
    others[0].in_flight = 1
    chosen = route(p, reps, chat(SYSTEM, "q3"))
    assert chosen is others[1]
    # the prompt's blocks now name the replica that got it
    owner.in_flight = 0
    others[0].in_flight = 0
    assert route(p, reps, chat(SYSTEM, "q4")) is others[1]


def test_external_load_from_metrics_counts_for_the_bound() -> None:
    p, reps = policy(balance=1.5, slack=2), replicas()
    owner = route(p, reps, chat(SYSTEM, "q"))
    owner.external = 10  # busy with other clients' requests
    assert route(p, reps, chat(SYSTEM, "q2")) is not owner


def test_a_down_tried_or_gone_owner_is_skipped_and_its_prefixes_move() -> None:
    p, reps = policy(), replicas()
    owner = route(p, reps, chat(SYSTEM, "q"))
    owner.down_until = 100.0
    moved = route(p, reps, chat(SYSTEM, "q"), now=50.0)
    assert moved is not owner
    owner.down_until = 0.0  # back: the prefix stays where it moved
    assert route(p, reps, chat(SYSTEM, "q"), now=200.0) is moved
    assert route(p, reps, chat(SYSTEM, "q"), tried=[moved]) not in (moved,)
    moved.active = False  # discovery dropped it
    live = [r for r in reps if r is not moved]
    assert route(p, live, chat(SYSTEM, "q")) in live


def test_the_table_is_bounded_and_forgets_the_least_recently_used() -> None:
    p, reps = policy(table_size=12), replicas()
    kept, dropped = chat("kept " * 50), chat("dropped " * 30)  # 3 blocks each
    for prompt in (kept, dropped):
        route(p, reps, prompt)
    for i in range(6):
        route(p, reps, kept)  # used again and again: stays
        route(p, reps, chat(f"other {i} " * 30))
        assert p.table_entries <= 12 + 3
    kept_blocks = p.key(kept, None).blocks  # type: ignore[union-attr]
    dropped_blocks = p.key(dropped, None).blocks  # type: ignore[union-attr]
    # a prompt seen again refreshes its deepest known block (what routes it) and deeper
    assert p.owner(kept_blocks[-1]) is route(p, reps, kept)
    assert all(p.owner(h) is None for h in dropped_blocks)


# --- session affinity ---------------------------------------------------------------------


def test_a_session_sticks_to_one_replica_whatever_its_prompts() -> None:
    reps = replicas(4)
    p = policy()
    chosen = {route(p, reps, chat(f"topic {i} " * 30), session="s-1") for i in range(8)}
    assert len(chosen) == 1
    by_user = route(p, reps, chat("y " * 50, user="s-1"))
    assert by_user is route(p, reps, chat("z " * 50), session="s-1")


def test_new_sessions_without_a_known_prefix_go_to_the_least_loaded() -> None:
    reps = replicas(4)
    p = policy()
    for i, replica in enumerate(reps):
        replica.in_flight = 3 - i  # the last is the least loaded
    assert route(p, reps, chat("fresh " * 50), session="new-1") is reps[3]
    for replica in reps:
        replica.in_flight = 0  # even: ties take turns
    sessions = {route(p, reps, chat(f"q{i} " * 50), session=f"s{i}").url for i in range(40)}
    assert len(sessions) == 4  # sessions spread over the replicas


def test_a_new_session_starts_where_its_prefix_is_then_keeps_its_replica() -> None:
    p, reps = policy(), replicas(4)
    holder = route(p, reps, chat(SYSTEM, "popular document " * 20))
    first = route(p, reps, chat(SYSTEM, "popular document " * 20, "q1"), session="new")
    assert first is holder  # the prefix's replica, not the least loaded one
    for i in range(5):  # later turns stay, whatever their prompts
        assert route(p, reps, chat(f"unrelated {i} " * 40), session="new") is holder


def test_a_session_moves_when_its_replica_is_over_the_bound_or_down() -> None:
    p, reps = policy(balance=1.5, slack=1), replicas(3)
    home = route(p, reps, chat("a " * 50), session="s")
    home.in_flight = 5
    second = route(p, reps, chat("a " * 50), session="s")
    assert second is not home
    home.in_flight = 0
    # it stays where it moved: its latest turns are cached there
    assert route(p, reps, chat("a " * 50, "b " * 50), session="s") is second
    second.down_until = 10.0
    third = route(p, reps, chat("a " * 50), session="s", now=5.0)
    assert third is not second
    second.down_until = 0.0
    assert route(p, reps, chat("a " * 50), session="s", now=20.0) is third


def test_a_single_replica_and_every_replica_tried() -> None:
    one = ReplicaSet(["http://only:1"], policy=policy())
    assert one.pick([], RouteKey(None, [1, 2])) is one.replicas[0]
    p, reps = policy(), replicas(2)
    with pytest.raises(AssertionError):
        route(p, reps, chat(SYSTEM), tried=list(reps))


def test_make_policy_names() -> None:
    assert isinstance(make_policy("least_inflight"), LeastInflight)
    assert isinstance(make_policy("prefix_affinity", block_chars=32), PrefixAffinity)
    with pytest.raises(ValueError, match="unknown routing policy"):
        make_policy("random")
    with pytest.raises(ValueError):
        PrefixAffinity(balance=0.5)


# --- the replica set changing ---------------------------------------------------------------


def test_update_keeps_known_replicas_and_marks_dropped_ones() -> None:
    rs = ReplicaSet(["http://a:1", "http://b:1"], policy=policy())
    a, b = rs.replicas
    a.in_flight = 2
    rs.update(["http://b:1/", "http://c:1", "http://b:1"])
    assert [r.url for r in rs.replicas] == ["http://b:1", "http://c:1"]
    assert rs.replicas[0] is b and not a.active and b.active
    assert a.in_flight == 2  # its requests run on
    rs.update([])  # a failed look-up changes nothing
    assert len(rs.replicas) == 2


# --- discovery pieces ---------------------------------------------------------------------


def test_replica_urls_per_address() -> None:
    urls = replica_urls(
        "http://user:pw@vllm.ns.svc:8000/base", ["10.0.0.9", "10.0.0.10", "fd00::1", "10.0.0.9"]
    )
    assert urls == [
        "http://user:pw@10.0.0.9:8000/base",
        "http://user:pw@10.0.0.10:8000/base",
        "http://user:pw@[fd00::1]:8000/base",
    ]


def test_reported_load_sums_running_and_waiting() -> None:
    text = (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="m"} 3.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        'vllm:num_requests_waiting{model_name="m"} 2.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        'vllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
    )
    assert reported_load(text) == 5
    assert reported_load("# TYPE other gauge\nother 7\n") is None
