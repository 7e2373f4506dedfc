"""The JS guest's web APIs across runs and sandboxes (the corpus checks them within one run):
crypto draws from the sandbox's entropy, fresh after every restore like Math.random; the timers
of a run do not outlive it."""

from __future__ import annotations

from snapcell import CodeSandbox


def test_crypto_is_fresh_in_every_run_and_sandbox() -> None:
    code = "[crypto.randomUUID(), Array.from(crypto.getRandomValues(new Uint8Array(16))).join()]"
    with CodeSandbox("js") as a, CodeSandbox("js") as b:
        seen = [a.run(code).unwrap(), a.run(code).unwrap(), b.run(code).unwrap()]
    uuids = [s[0] for s in seen]
    assert len(set(uuids)) == 3 and len({s[1] for s in seen}) == 3


def test_timers_left_by_a_timed_out_run_are_gone() -> None:
    with CodeSandbox("js", keep_state=True, timeout=0.5) as box:
        r = box.run("globalThis.n = 0; setInterval(() => { n++ }, 1); 'started'")
        assert r.error is not None and r.error.type == "TimeoutError"
        # the session was reset to the base snapshot: no interval, no n
        assert box.run("typeof n").unwrap() == "undefined"
        assert box.run("await new Promise(r => setTimeout(() => r('ok'), 5))").unwrap() == "ok"


def test_keep_state_sessions_keep_top_level_await_bindings() -> None:
    with CodeSandbox("js", keep_state=True) as box:
        assert box.run("const a = await Promise.resolve(5); let b = a + 1; b").unwrap() == 6
        assert box.run("[a, b]").unwrap() == [5, 6]
