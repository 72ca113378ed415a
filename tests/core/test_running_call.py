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


def test_a_unets_attn1_mark_is_its_own_threads():
    """The mark that tells a UNet's attn1 from its attn2 (and keeps attn1's input X), shared by
    a model's clones: one thread's attn1 must not place the other's calls."""
    from hopfield_circulation.families.unet_attn1 import Attn1Marker

    marker = Attn1Marker()
    marked, seen = threading.Barrier(2), {}

    def attn1_then_attn2(name, block):
        marker.key, marker.x = block, name
        marked.wait()  # both threads inside their attn1
        seen[name] = (marker.key, marker.x)
        marker.key = marker.x = None  # attn1's output patch, before attn2
        marked.wait()
        seen[f"{name} attn2"] = marker.key

    threads = [threading.Thread(target=attn1_then_attn2, args=(name, (("input", 4), i)))
               for i, name in enumerate(("cond", "uncond"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"cond": ((("input", 4), 0), "cond"), "uncond": ((("input", 4), 1), "uncond"),
                    "cond attn2": None, "uncond attn2": None}
