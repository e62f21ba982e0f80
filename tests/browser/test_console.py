"""The web console in a real browser: sign in with an API key, open a finished fine-tuning
job and see its loss curve and evaluation table, promote and roll back an adapter version,
look at usage and the audit log.

Registry, training (with its embedded Ray head) and gateway run as real processes on
loopback; the job is a real LoRA run on tiny-llama, kept to a few steps. No inference
replica: the console's pages do not need one."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.datasets import samples
from tests.support.adapters import make_adapter, pack
from tests.support.postgres import free_port
from tests.support.procs import ServiceProcess, service

pytestmark = [pytest.mark.browser]
TOKEN = "browser-test-token"
ADMIN = "tf-browser-admin-key"


@dataclass
class Console:
    gateway: ServiceProcess
    registry: ServiceProcess
    training: ServiceProcess
    admin: str
    integrator: str

    def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
        r = httpx.request(
            method,
            self.gateway.url + path,
            headers={"Authorization": f"Bearer {key or self.admin}"},
            timeout=60,
            **kw,
        )
        assert r.status_code < 300, r.text
        return r.json()


@pytest.fixture(scope="module")
def fleet(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    home = tmp_path_factory.mktemp("console")
    common = {"TUNEFLEET_INTERNAL_TOKEN": TOKEN}
    with service(
        "registry",
        "services.registry",
        home,
        {**common, "TUNEFLEET_REGISTRY_SEED_MODELS_DIR": str(model_dir.parent)},
        "TUNEFLEET_REGISTRY_PORT",
    ) as reg:
        reg.wait_ready()
        trn_env = {
            **common,
            "TUNEFLEET_TRAINING_REGISTRY_URL": reg.url,
            "TUNEFLEET_TRAINING_RAY_NUM_CPUS": "2",
        }
        with service(
            "training", "services.training", home, trn_env, "TUNEFLEET_TRAINING_PORT"
        ) as trn:
            trn.wait_ready(timeout=300)
            gw_env = {
                **common,
                "TUNEFLEET_ADMIN_KEY": ADMIN,
                "TUNEFLEET_GATEWAY_REGISTRY_URL": reg.url,
                "TUNEFLEET_GATEWAY_TRAINING_URL": trn.url,
                # No replica: the console needs none, and /readyz is not under test here.
                "TUNEFLEET_GATEWAY_INFERENCE_URLS": json.dumps([f"http://127.0.0.1:{free_port()}"]),
            }
            with service("gateway", "gateway", home, gw_env, "TUNEFLEET_GATEWAY_PORT") as gw:
                gw.wait_ready(probe="/healthz")
                c = Console(gw, reg, trn, ADMIN, "")
                c.call("POST", "/admin/tenants", json={"id": "acme", "name": "Acme"})
                c.integrator = c.call(
                    "POST", "/admin/keys", json={"tenant": "acme", "role": "integrator"}
                )["key"]
                yield c


@pytest.fixture(scope="module")
def adapter(fleet: Console, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """support-router with two versions, production on v1."""
    root = tmp_path_factory.mktemp("console-adapters")
    for seed in (1, 2):
        archive = pack(make_adapter(model_dir, root / f"a{seed}", seed=seed), root / f"{seed}.tgz")
        with archive.open("rb") as fh:
            fleet.call(
                "POST",
                "/v1/adapters/support-router/versions",
                fleet.integrator,
                files={"file": ("a.tar.gz", fh)},
                data={"metadata": json.dumps({"base_model": "tiny-llama"})},
            )
    fleet.call(
        "PUT",
        "/v1/adapters/support-router/aliases/production",
        fleet.integrator,
        json={"version": 1},
    )
    return "support-router"


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(url + "/console/")
    page.fill("#api-key", key)
    page.click("#signin-form button")
    page.wait_for_selector("#nav:not([hidden])")


def test_sign_in_rejects_a_bad_key(browser: Any, fleet: Console, artifacts: Path) -> None:
    page = browser.new_page()
    page.goto(fleet.gateway.url + "/console/")
    page.fill("#api-key", "tf-not-a-key")
    page.click("#signin-form button")
    page.wait_for_selector("#error:not([hidden])")
    assert "invalid_api_key" in page.inner_text("#error")
    assert page.evaluate("sessionStorage.getItem('tunefleet.apiKey')") is None
    page.screenshot(path=str(artifacts / "bad-key.png"))
    page.close()


def test_promote_a_version(browser: Any, fleet: Console, adapter: str, artifacts: Path) -> None:
    page = browser.new_page()
    sign_in(page, fleet.gateway.url, fleet.integrator)
    page.click("a[data-view=adapters]")
    page.click(f"tr[data-id] >> text={adapter}")
    page.wait_for_selector("button.promote[data-version='2']")
    assert "production → v1" in page.inner_text("[data-alias=production]")
    page.click("button.promote[data-version='2']")
    page.wait_for_selector("[data-alias=production] >> text=production → v2")
    page.screenshot(path=str(artifacts / "adapter-promoted.png"), full_page=True)
    assert fleet.call("GET", f"/v1/adapters/{adapter}", fleet.integrator)["aliases"] == {
        "production": 2
    }
    page.click("[data-alias=production] button")  # roll back
    page.wait_for_selector("[data-alias=production] >> text=production → v1")
    page.close()


def test_audit_and_usage_pages(browser: Any, fleet: Console, adapter: str, artifacts: Path) -> None:
    page = browser.new_page()
    sign_in(page, fleet.gateway.url, fleet.admin)
    page.click("a[data-view=audit]")
    page.wait_for_selector("#view >> text=hash chain: verified")
    assert "key.create" in page.inner_text("#view")
    page.screenshot(path=str(artifacts / "audit.png"), full_page=True)
    page.click("a[data-view=usage]")
    page.wait_for_selector("#usage-chart")
    page.screenshot(path=str(artifacts / "usage.png"), full_page=True)
    page.close()


@pytest.fixture(scope="module")
def finished_job(fleet: Console) -> dict[str, Any]:
    """A real LoRA job through the gateway: a few steps, held-out evaluation, registry push."""
    rows = samples.ticket_examples(48, seed=1)
    data = "\n".join(
        json.dumps({"prompt": r["prompt"], "completion": r["completion"]}) for r in rows
    )
    uploaded = fleet.call(
        "POST",
        "/v1/files",
        fleet.integrator,
        files={"file": ("tickets.jsonl", data.encode())},
        data={"purpose": "fine-tune"},
    )
    job = fleet.call(
        "POST",
        "/v1/fine_tuning/jobs",
        fleet.integrator,
        json={
            "model": "tiny-llama",
            "training_file": uploaded["id"],
            "suffix": "ticket-router",
            "task": "classification",
            "seed": 3,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "resources": {"num_workers": 1},
            "hyperparameters": {"batch_size": 8, "max_steps": 6},
        },
    )
    deadline = time.monotonic() + 600
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job not finished: {job}"
        time.sleep(1)
        job = fleet.call("GET", f"/v1/fine_tuning/jobs/{job['id']}", fleet.integrator)
    assert job["status"] == "succeeded", job
    return dict(job)


def test_finished_job_shows_loss_chart_and_evaluation(
    browser: Any, fleet: Console, finished_job: dict[str, Any], artifacts: Path
) -> None:
    page = browser.new_page()
    sign_in(page, fleet.gateway.url, fleet.integrator)
    page.click(f"tr[data-id='{finished_job['id']}']")
    page.wait_for_selector("#loss-chart svg path[data-series='train loss']")
    page.screenshot(path=str(artifacts / "job.png"), full_page=True)
    d = page.get_attribute("#loss-chart svg path[data-series='train loss']", "d") or ""
    assert d.count("L") >= 1, d  # a line through at least two steps
    assert page.inner_text("#job-status") == "succeeded"
    evaluation = page.inner_text("#eval")
    assert "eval_loss" in evaluation and "BASE" in evaluation.upper(), (evaluation, finished_job)
    # The version this job pushed is promoted from its adapter page.
    name, _, ref = finished_job["fine_tuned_model"].partition("@")
    version = ref.lstrip("v")  # "ticket-router@v1"
    page.goto(f"{fleet.gateway.url}/console/#adapters/{name}")
    page.wait_for_selector(f"button.promote[data-version='{version}']")
    page.click(f"button.promote[data-version='{version}']")
    page.wait_for_selector(f"[data-alias=production] >> text=production → v{version}")
    page.close()
