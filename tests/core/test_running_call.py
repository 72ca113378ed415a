"""The model call a hook reads is its own thread's: newer ComfyUI's MultiGPU CFG split runs the
cond and uncond model calls at once, one worker thread per GPU."""

from __future__ import annotations

import threading

from hopfield_circulation.hook.schedule import ModelCall, running, running_call


def test_concurrent_model_calls_each_read_their_own():
    both_inside = threading.Barrier(2)
    seen = {}

    def model_call(name, chunks):
        call = ModelCall(cond_or_uncond=chunks)
        with running(call):
            both_inside.wait()  # the other thread's call is under way too
            seen[name] = running_call() is call
            both_inside.wait()
        seen[f"{name} after"] = running_call()

    threads = [threading.Thread(target=model_call, args=("cond", (0,))),
               threading.Thread(target=model_call, args=("uncond", (1,)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"cond": True, "uncond": True, "cond after": None, "uncond after": None}
    assert running_call() is None


def test_nested_model_calls_in_one_thread_read_the_innermost():
    outer, inner = ModelCall(), ModelCall()
    with running(outer):
        with running(inner):
            assert running_call() is inner
        assert running_call() is outer
    assert running_call() is None
