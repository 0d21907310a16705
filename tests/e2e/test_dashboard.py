"""/ui in a real headless Chromium against a real LMForge: the page renders what the status stream says, its
buttons load and unload models, and with a key configured it asks for one."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.support.browser import Page, chromium, chromium_binary
from tests.support.instance import Instance
from tests.support.slow_engine import release, write_slow_engine

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary installed (apt-get install chromium)"),
]

ROOT = Path(__file__).parents[2]
KEY = "dashboard-key-0123"


def row(model: str) -> str:
    """The expression for a model's row in the slot table (or null)."""
    return f"document.querySelector('#slots tr[data-model=' + CSS.escape({json.dumps(model)}) + ']')"


def text(element_id: str) -> str:
    return f"document.getElementById({json.dumps(element_id)}).textContent"


async def rendered(page: Page) -> None:
    """Live, with the machine and its memory budget on show."""
    await page.wait_for(f"{text('conn')} === 'live'", what="the status stream to be live")
    await page.wait_for(f"{text('hardware')}.includes('RAM') && {text('budget-label')}.includes('/')",
                        what="the hardware and the budget")


async def save_screenshot(page: Page, tmp_path: Path) -> None:
    shot = await page.screenshot(tmp_path / "dashboard.png")
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("LMFORGE_SAVE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shot = Path(shutil.copy(shot, ROOT / "docs" / "dashboard.png"))
    print(f"dashboard screenshot: {shot}")


async def test_a_load_and_an_unload_from_the_page_show_live(make_instance, models_dir: Path, llama_server: str,
                                                            tmp_path: Path) -> None:
    inst: Instance = make_instance(models={"a": models_dir / "chat.gguf", "slow": models_dir / "chat.gguf"})
    # A large model's long load, which the tiny test model (ready in ~30 ms) does not have: it lasts until the
    # test has seen it on the page and releases it.
    gate = tmp_path / "loaded"
    inst.env["LMFORGE_LLAMA_SERVER"] = str(write_slow_engine(tmp_path, llama_server, gate=gate))
    inst.start()
    async with chromium() as page:
        await page.goto(inst.url + "/ui")
        await rendered(page)
        assert await page.evaluate(f"{text('slots-empty')} !== '' && !document.getElementById('slots-empty').hidden")
        await page.wait_for("[...document.getElementById('model-pick').options].map(o => o.value).sort().join()"
                            " === 'a,slow'", what="the installed models in the picker")

        await page.evaluate("(() => { const pick = document.getElementById('model-pick'); pick.value = 'slow';"
                            " pick.dispatchEvent(new Event('change')); document.getElementById('load').click(); })()")
        # The row appears while the engine starts, with the stage of its load from the stream's `load` events.
        stage = await page.wait_for(f"{row('slow')}?.dataset.state === 'loading' && "
                                    f"{row('slow')}.querySelector('.stage[data-stage]')?.textContent",
                                    what="slow loading, with its stage")
        assert stage.strip()
        seen = time.monotonic()
        await asyncio.to_thread(release, gate)
        released = time.monotonic()
        await page.wait_for(f"{row('slow')}?.dataset.state === 'ready'", timeout=30, what="slow ready")
        countdown = await page.wait_for(f"{row('slow')}.querySelector('.expiry').textContent", what="its keep-alive")
        assert countdown.startswith("unloads in ")
        took = await page.evaluate("document.querySelector('#history tr[data-model=\"slow\"][data-to=\"ready\"] .took')"
                                   "?.textContent")
        assert took and float(took.rstrip("s")) >= released - seen  # the history timed the load the page watched
        assert await page.evaluate("document.querySelectorAll('#budget-bar .segment').length") == 1
        assert int(await page.evaluate("document.getElementById('budget-bar').dataset.used")) > 0
        assert inst.slot("slow")["state"] == "ready"
        await save_screenshot(page, tmp_path)

        await page.evaluate(f"{row('slow')}.querySelector('button[data-action=pin]').click()")
        await page.wait_for(f"{row('slow')}.querySelector('.expiry').textContent === 'pinned'"
                            f" && {row('slow')}.querySelector('button[data-action=pin]') === null", what="slow pinned")
        assert inst.slot("slow")["pinned"]

        await page.evaluate(f"{row('slow')}.querySelector('button[data-action=unload]').click()")
        await page.wait_for(f"{row('slow')} === null && !document.getElementById('slots-empty').hidden",
                            what="slow's row to go")
        assert inst.slot("slow") is None
        assert await page.evaluate("document.querySelectorAll('#budget-bar .segment').length") == 0

        # The stream ends with its gateway; the page reconnects to the next one by itself.
        inst.stop("gateway")
        await page.wait_for(f"{text('conn')}.startsWith('reconnecting')", what="the page to notice")
        inst.start("gateway")
        await rendered(page)
        assert page.errors == []


async def test_with_a_key_configured_the_page_asks_for_it_then_shows_the_status(make_instance) -> None:
    # No network is trusted, loopback included: every /lf call needs the key, as from a machine outside them.
    inst: Instance = make_instance(f'trusted_networks = []\napi_key = "{KEY}"\n').start()
    assert inst.get("/lf/status")[0] == 401
    async with chromium() as page:
        await page.goto(inst.url + "/ui")  # the page's own files need no key: it holds no data
        reason = await page.wait_for(f"document.getElementById('key-dialog').open && {text('key-reason')}",
                                     what="the key prompt")
        assert "trusted_networks" in reason
        assert "RAM" not in await page.evaluate(text("hardware"))

        async def enter(key: str) -> None:
            await page.evaluate(f"document.getElementById('key-input').value = {json.dumps(key)};"
                                "document.getElementById('key-form').requestSubmit()")

        await enter("not-the-key")
        await page.wait_for(f"document.getElementById('key-dialog').open && {text('key-reason')}.includes('not valid')",
                            what="the prompt again, for a key that is not valid")
        await enter(KEY)
        await rendered(page)
        assert await page.evaluate("sessionStorage.getItem('lmforge.key')") == KEY
        assert not await page.evaluate("document.getElementById('key-dialog').open")

        # An admin action carries the key too: the pull reaches the manager, which fails it (no hub is reachable).
        await page.evaluate("document.getElementById('pull-name').value = 'someone/tiny-GGUF:Q4_K_M';"
                            "document.getElementById('pull-form').requestSubmit()")
        failed = await page.wait_for("document.querySelector('#pulls li[data-state=failed]')?.textContent",
                                     timeout=30, what="the pull to show as failed")
        assert "someone/tiny-GGUF" in failed
        await page.wait_for(f"{text('notice')}.startsWith('someone/tiny-GGUF:Q4_K_M: ')", what="why, by the picker")
        # A pull the page did not start shows from the stream's download events alone, beside the first.
        code, _ = inst.request("POST", "/lf/model/pull", {"model": "other/tiny-GGUF:Q8_0", "keep": True},
                               headers={"Authorization": f"Bearer {KEY}"})
        assert code == 200
        both = "other/tiny-GGUF:Q8_0,someone/tiny-GGUF:Q4_K_M"
        await page.wait_for("[...document.querySelectorAll('#pulls li[data-state=failed] strong')]"
                            f".map(n => n.textContent).sort().join() === '{both}'", what="both pulls, failed")
        assert await page.evaluate("document.querySelectorAll('#pulls li').length") == 2
        assert page.errors == []
