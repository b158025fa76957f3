"""The MLflow UI in a real browser, on the store that a run of the main job filled.

The main job runs once on tiny data (as in test_pipeline.py) and stops its own tracking server;
the UI is then served from the command the job prints, and headless Chromium (Debian's
``chromium`` + ``chromedriver``, driven by Selenium) checks what a person would look for: the
experiment, the tuned run's metric chart, its CAM overlay picture and the registered model
with its ``champion`` alias. Screenshots go to the test's tmp dir and to ``outputs/mlflow_ui/``.
"""

import io
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from bgwsol.tracking.local_server import LocalMlflowServer, free_port
from bgwsol.workflows.main_job import report
from bgwsol.tracking.runs import TrackingConfig


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MODEL, ALIAS, METRIC = "bgwsol-fruit", "champion", "val_maxboxacc_v2"
OVERLAY = "overlays/overlays_epoch000.png"
WAIT_S = 60  # a cold single-page app on 2 shared cores; every wait ends as soon as its element is there
WINDOW = (1400, 1000)

pytestmark = [
    pytest.mark.ray, pytest.mark.slow, pytest.mark.mlflow, pytest.mark.browser,
    # scripts/test.sh installs both from Debian's packages; only a machine without them skips
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="Debian's chromium and chromium-driver are not installed (scripts/test.sh installs "
                              "them: apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def pipeline_result(pipeline_run):
    """The shared tiny run of the main job (conftest); its own MLflow server is gone when it returns."""
    return pipeline_run[0]


@pytest.fixture(scope="module")
def ui(pipeline_result, tmp_path_factory):
    """The UI served by the command the job printed (on a free port instead of 5000), and the ids to look for."""
    from mlflow import MlflowClient

    printed = report(pipeline_result, 0.0)
    command = pipeline_result["ui_command"]
    assert command and command in printed
    argv = shlex.split(command)
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    log_dir = tmp_path_factory.mktemp("mlflow_ui")
    # no job runner on a 2-core machine (../shared/GOTCHAS.md); telemetry off, as offline
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log_dir / "server.log", "ab") as log_file:
        proc = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    # the same wait and process-group stop as the job's own server
    server = LocalMlflowServer(log_dir, port, proc)
    try:
        server.wait_ready()
        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name(TrackingConfig().experiment)
        assert experiment is not None, "the job logged no runs under the default experiment"
        reg = pipeline_result["registration"]
        assert (reg.name, reg.champion) == (MODEL, True)
        # looked up by number, not by alias: whether the alias is there is for the page to show
        version = client.get_model_version(reg.name, str(reg.version))
        run = client.get_run(version.run_id)  # the tuned trial whose checkpoint was registered
        yield {"url": server.url, "experiment": experiment, "run": run, "version": version,
               "overlay": client.download_artifacts(run.info.run_id, OVERLAY, str(log_dir))}
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium from Debian through Debian's chromedriver; never downloads a browser or a driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # a closed network: without the background-networking flags Chromium's own connections are refused
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"):
        options.add_argument(flag)
    # an explicit driver path: Selenium Manager (which would download one) is never started
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow_ui_screenshots")


def _open(driver, url: str) -> None:
    driver.get(url)


def _click(driver, element) -> None:
    """Click through whatever first-visit popover ("Detect issues", tours) happens to lie over the element."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", element)


def _close_assistant(driver) -> None:
    """The assistant side panel covers a third of the page in a fresh profile: close it for the screenshots."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'):
        if button.is_displayed():
            _click(driver, button)


def _wait_for(driver, what: str, shots: Path, name: str, locate):
    """Wait until ``locate(driver)`` returns something truthy; on time-out, fail with a screenshot of the page."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.25).until(lambda d: locate(d))
    except TimeoutException:
        driver.save_screenshot(str(shots / f"{name}-FAILED.png"))
        pytest.fail(f"{what}: not shown within {WAIT_S} s at {driver.current_url} "
                    f"(screenshot {shots / f'{name}-FAILED.png'})")


def _screenshot(driver, shots: Path, name: str) -> Path:
    """Save a screenshot, check it is a real picture of a page, and copy it to outputs/mlflow_ui/ for people."""
    from PIL import Image

    _close_assistant(driver)
    path = shots / f"{name}.png"
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"{path}: {len(data)} bytes"
    with Image.open(io.BytesIO(data)) as image:
        # the viewport: the window's width, its height less the (invisible) browser chrome
        assert image.width == WINDOW[0] and image.height > WINDOW[1] // 2, image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50, f"{path}: a blank page ({len(colours)} colours)"
    out = Path(__file__).resolve().parents[1] / "outputs" / "mlflow_ui"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, out / path.name)
    return path


def test_the_printed_link_opens_the_training_runs_table(ui, pipeline_result, browser, shots):
    """The job prints ``http://127.0.0.1:5000/#/experiments/<id>/runs`` with the UI command: opened
    in a fresh browser it shows the training runs (the Tune parent run), not MLflow 3's GenAI
    overview of traces that ``#/experiments/<id>`` alone opens."""
    from selenium.webdriver.common.by import By

    exp, run = ui["experiment"], ui["run"]
    eid, parent_id = exp.experiment_id, run.data.tags["mlflow.parentRunId"]
    printed = report(pipeline_result, 0.0)
    fragment = f"#/experiments/{eid}/runs"
    assert f"http://127.0.0.1:5000/{fragment}" in printed
    _open(browser, f"{ui['url']}/{fragment}")
    _wait_for(browser, "the Tune parent run in the runs table opened from the printed link", shots, "printed_link",
              lambda d: d.find_elements(By.CSS_SELECTOR, f'[role="row"][row-id="{parent_id}"]'))
    _screenshot(browser, shots, "printed_link")


def test_the_experiment_is_listed_and_leads_to_the_tuned_run(ui, browser, shots):
    from selenium.webdriver.common.by import By

    exp, run = ui["experiment"], ui["run"]
    eid, parent_id = exp.experiment_id, run.data.tags["mlflow.parentRunId"]
    _open(browser, f"{ui['url']}/#/experiments")
    link = _wait_for(browser, f"experiment {exp.name!r} in the experiments list", shots, "experiments",
                     lambda d: d.find_elements(By.CSS_SELECTOR,
                                               f'a[data-testid="experiment-list-item-link"][title="{exp.name}"]'))[0]
    assert link.get_attribute("href").endswith(f"#/experiments/{eid}")
    _screenshot(browser, shots, "experiments")
    _click(browser, link)
    # an experiment opens on its GenAI overview: the training runs are one click away in its sidebar
    runs_link = _wait_for(browser, "the experiment's 'Training runs' link", shots, "experiment_runs",
                          lambda d: [a for a in d.find_elements(By.CSS_SELECTOR, f'a[href^="#/experiments/{eid}/runs"]')
                                     if a.text.strip() == "Training runs"])[0]
    _click(browser, runs_link)
    # the Tune run is listed with its trials folded under it; unfolding it shows the tuned trial
    parent_row = f'[role="row"][row-id="{parent_id}"]'
    parent_link = f'{parent_row} a[href="#/experiments/{eid}/runs/{parent_id}"]'
    _wait_for(browser, "the Tune parent run in the runs table", shots, "experiment_runs",
              lambda d: d.find_elements(By.CSS_SELECTOR, parent_link))
    unfold = browser.find_element(By.CSS_SELECTOR, f'{parent_row} button[data-component-id*="runnamecellrenderer"]')
    _click(browser, unfold)
    trial_link = f'a[href="#/experiments/{eid}/runs/{run.info.run_id}"]'
    trial = _wait_for(browser, f"run {run.info.run_name!r} under the Tune run", shots, "experiment_runs",
                      lambda d: d.find_elements(By.CSS_SELECTOR, trial_link))[0]
    assert trial.text.strip() == run.info.run_name
    _screenshot(browser, shots, "experiment_runs")
    _click(browser, trial)
    _wait_for(browser, f"the page of run {run.info.run_name!r}", shots, "run",
              lambda d: [h for h in d.find_elements(By.CSS_SELECTOR, '[data-testid="runs-header"]')
                         if h.text.strip() == run.info.run_name])
    _screenshot(browser, shots, "run")


def test_the_tuned_run_shows_its_metric_chart(ui, browser, shots):
    from selenium.webdriver.common.by import By

    exp, run = ui["experiment"], ui["run"]
    value = run.data.metrics[METRIC]
    _open(browser, f"{ui['url']}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/model-metrics")
    search = _wait_for(browser, "the metric chart search box", shots, "metric_chart",
                       lambda d: d.find_elements(By.CSS_SELECTOR, 'input[placeholder="Search metric charts"]'))[0]
    search.send_keys(METRIC)  # charts below the fold are rendered lazily: filter down to this one
    card = f'//*[@data-testid="experiment-view-compare-runs-card"][.//h4[@title="{METRIC}"]]'
    _wait_for(browser, f"a {METRIC} chart card", shots, "metric_chart", lambda d: d.find_elements(By.XPATH, card))

    def plotted(d):
        # the values Plotly drew in that card (a bar for one logged step, a line for several)
        return d.execute_script("""
            const card = document.evaluate(arguments[0], document, null, 9, null).singleNodeValue;
            const plot = card && card.querySelector('.js-plotly-plot');
            if (!plot || !plot.data || !card.querySelector('svg.main-svg g.trace')) return null;
            return plot.data.flatMap(t => [...(t.x || []), ...(t.y || [])]).filter(v => typeof v === 'number');
        """, card)

    values = _wait_for(browser, f"the {METRIC} chart drawn", shots, "metric_chart", plotted)
    assert any(v == pytest.approx(value) for v in values), f"{METRIC}={value} not among the plotted values {values}"
    assert run.info.run_name in browser.find_element(By.XPATH, card).text  # the legend names the run
    _screenshot(browser, shots, "metric_chart")


def test_the_overlay_picture_is_listed_and_displayed(ui, browser, shots):
    from PIL import Image
    from selenium.webdriver.common.by import By

    exp, run = ui["experiment"], ui["run"]
    _open(browser, f"{ui['url']}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts")
    folder, name = OVERLAY.split("/")
    # the artifact tree lists the folder; opening it lists the picture
    folder_node = _wait_for(browser, f"the {folder}/ folder in the artifact tree", shots, "overlay",
                            lambda d: d.find_elements(By.XPATH, f'//*[normalize-space(text())="{folder}"]'))[0]
    _click(browser, folder_node)
    file_node = _wait_for(browser, f"{name} in the artifact tree", shots, "overlay",
                          lambda d: d.find_elements(By.XPATH, f'//*[normalize-space(text())="{name}"]'))[0]
    _click(browser, file_node)

    def shown(d):
        # decoded and displayed: the browser knows its pixel size only once the bytes arrived as an image
        return d.execute_script("""
            const img = document.querySelector(`img[alt="${arguments[0]}"]`);
            return img && img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().width > 0
                ? [img.naturalWidth, img.naturalHeight] : null;
        """, OVERLAY)

    size = _wait_for(browser, f"the {OVERLAY} preview", shots, "overlay", shown)
    with Image.open(ui["overlay"]) as logged:
        assert tuple(size) == logged.size  # the very picture the run logged
    _screenshot(browser, shots, "overlay")


def test_the_registered_model_shows_the_champion_alias(ui, browser, shots):
    from selenium.webdriver.common.by import By

    version = ui["version"]
    _open(browser, f"{ui['url']}/#/models/{MODEL}")
    # the alias tag sits in the row of the version it points to
    row = f'//*[@role="row"][.//a[@href="#/models/{MODEL}/versions/{version.version}"]]'
    _wait_for(browser, f"alias {ALIAS!r} on version {version.version} of {MODEL}", shots, "registered_model",
              lambda d: d.find_elements(By.XPATH, f'{row}//*[@title="{ALIAS}"]'))
    assert f"@ {ALIAS}" in browser.find_element(By.XPATH, row).text  # shown as a person reads it
    _screenshot(browser, shots, "registered_model")


def test_the_report_renders_every_picture_and_the_numbers_of_results_json(pipeline_run, ui, browser, shots):
    """report.html beside comparison.md: it renders from disk, every image in it loads, each table
    cell holds the value results.json has, and the tuned run carries it as an MLflow artifact."""
    import json

    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By

    result, work = pipeline_run
    out = work / result["output_dir"]  # the job ran with relative paths inside its workdir
    page = out / "report.html"
    results = json.loads((out / "results.json").read_text())
    _open(browser, page.as_uri())
    _wait_for(browser, "the report's table", shots, "report", lambda d: d.find_elements(By.ID, "metrics"))
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0]);")
    models = results["models"]
    # the curves, the loss terms, and one tile per model and example column
    assert len(images) >= 2 + len(models) * 4, images
    assert all(loaded for _alt, loaded in images), [alt for alt, loaded in images if not loaded]
    cells = browser.execute_script(
        "return Array.from(document.querySelectorAll('#metrics tr[data-model]')).map(r => [r.dataset.model, "
        "Array.from(r.querySelectorAll('td[data-value]')).map(c => [c.cellIndex, Number(c.dataset.value), c.textContent])]);")
    keys = browser.execute_script("return Array.from(document.querySelectorAll('#metrics th[data-key]')).map(h => h.dataset.key);")
    assert [label for label, _ in cells] == [m["label"] for m in models]
    for (label, row), model in zip(cells, models):
        assert row, f"no numbers in the row of {label}"
        for index, value, text in row:
            key = keys[index - 1]
            assert value == pytest.approx(model["test"][key], abs=1e-9) and text == f"{model['test'][key]:.1f}"
    # the row of the delivered model is the one results.json reports as bgwsol's test metrics
    assert models[-1]["test"] == results["test"]["bgwsol"]
    per_class = browser.find_elements(By.CSS_SELECTOR, "#per-class tr")
    assert len(per_class) == 1 + len(models[-1]["per_class_top1_loc"])
    _screenshot(browser, shots, "report")
    artifacts = [a.path for a in MlflowClient(ui["url"]).list_artifacts(ui["run"].info.run_id)]
    assert "report.html" in artifacts
