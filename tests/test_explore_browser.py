"""`reweigh explore` in a real browser: headless Chromium (Debian's chromium and chromium-driver) driven by Selenium
opens the app on a run, the data map renders, clicking a sample shows its text and trajectory, and moving a
curation threshold changes the counts to what `reweigh curate` writes for the same threshold.

Where the browser cannot start these tests skip, except with ``REWEIGH_REQUIRE_BROWSER=1`` (CI sets it), where they
fail.
"""

import contextlib
import os

import pytest

for _module in ('starlette', 'uvicorn', 'plotly', 'streaming'):  # reweigh[explore] and reweigh[composer]
    pytest.importorskip(_module)
from browser_support import BrowserUnavailable, chromium, click_until, served, wait_for  # noqa: E402
from test_compare import _study  # noqa: E402
from test_explore import explore_run  # noqa: E402

from reweigh.cli.main import main  # noqa: E402
from reweigh.explore.views import Explorer  # noqa: E402
from reweigh.pipeline import SampleLookup  # noqa: E402
from reweigh.pipeline.manifest import read_manifest  # noqa: E402

MAX_POINTS = 300
"""Fewer than the ~1000 samples of the small dataset: the whole map is drawn as bins, a zoomed-in region as points."""


@pytest.fixture(scope='module')
def page(small_dataset, tmp_path_factory):
    """(driver, run) with the app open in Chromium on a run over the small dataset, with the 5 other runs of a
    uniform-against-linupper study beside it."""
    paths = _study(tmp_path_factory.mktemp('explore-browser'))
    run = explore_run(paths[0], small_dataset)
    with contextlib.ExitStack() as stack:
        explorer = Explorer(run, compare=paths[1:], max_points=MAX_POINTS)
        stack.callback(explorer.close)
        url = stack.enter_context(served(explorer))
        try:
            driver = stack.enter_context(chromium())
        except BrowserUnavailable as e:
            if os.environ.get('REWEIGH_REQUIRE_BROWSER') == '1':
                pytest.fail(f'the browser tests must run here (REWEIGH_REQUIRE_BROWSER=1): {e}')
            pytest.skip(str(e))
        driver.get(url)
        wait_for(driver, "document.body.dataset.ready === 'true'")
        yield driver, run


def test_the_data_map_renders_every_sample_as_bins(page):
    driver, run = page
    samples = driver.execute_script("return fetch('/api/overview').then(r => r.json()).then(o => o.samples);")
    assert samples > MAX_POINTS
    assert driver.execute_script("return document.getElementById('map').dataset.kind;") == 'bins'
    assert int(driver.execute_script("return document.getElementById('map').dataset.count;")) == samples
    assert driver.execute_script("return document.getElementById('map').data[0].type;") == 'heatmap'
    assert driver.execute_script("return document.querySelectorAll('#map .heatmaplayer image').length;") == 1
    assert str(run) in driver.find_element('id', 'run-summary').text
    assert driver.find_element('id', 'map-status').text == f'{samples:,} samples (bins)'


def test_clicking_a_bin_zooms_in_to_its_samples_as_points(page):
    driver, _ = page
    # the fullest bin, and where it is on the screen (plotly's axes map data to pixels)
    x, y, dx, dy = driver.execute_script("""
        const gd = document.getElementById('map'), m = gd.data[0];
        let best = [0, 0, -1];
        m.customdata.forEach((row, j) => row.forEach((n, i) => { if (n > best[2]) best = [i, j, n]; }));
        return [m.x[best[0]], m.y[best[1]], m.x[1] - m.x[0], m.y[1] - m.y[0]];""")
    left, top, width, height = driver.execute_script("""
        const gd = document.getElementById('map'), l = gd._fullLayout, r = gd.getBoundingClientRect();
        return [l.xaxis.l2p(arguments[0]) + l._size.l, l.yaxis.l2p(arguments[1]) + l._size.t, r.width, r.height];""", x, y)
    click_until(driver, driver.find_element('id', 'map'), "document.getElementById('map').dataset.kind === 'points'",
                offset=(int(left - width / 2), int(top - height / 2)))
    count = int(driver.execute_script("return document.getElementById('map').dataset.count;"))
    assert 0 < count <= MAX_POINTS
    assert driver.execute_script("return document.querySelectorAll('#map .scatterlayer .point').length;") == count
    xs = driver.execute_script("return document.getElementById('map').data.flatMap(t => t.x);")
    ys = driver.execute_script("return document.getElementById('map').data.flatMap(t => t.y);")
    assert all(x - 2.5 * dx - 1e-9 <= v <= x + 2.5 * dx + 1e-9 for v in xs)  # the 5 x 5 bins around the one clicked
    assert all(y - 2.5 * dy - 1e-9 <= v <= y + 2.5 * dy + 1e-9 for v in ys)


def test_the_runs_are_set_side_by_side(page):
    driver, _ = page
    assert driver.execute_script("return document.getElementById('runs-panel').dataset.arms;") == '2'
    names = driver.execute_script("return document.getElementById('runs-plot').data.filter(t => t.showlegend !== false)"
                                  ".map(t => t.name);")
    assert names == ['uniform', 'linupper']
    rows = driver.find_elements('css selector', '#runs-table tbody tr')
    cells = {tuple(c.text for c in row.find_elements('tag name', 'td')[:2]): row for row in rows}
    assert ('linupper', 'code') in cells and 'baseline' in cells[('uniform', 'code')].text


def test_clicking_a_sample_shows_its_text_and_trajectory(page, small_dataset):
    driver, _ = page
    shown = driver.execute_script("return document.getElementById('map').data.flatMap(t => t.customdata);")
    point = driver.find_elements('css selector', '#map .scatterlayer .point')[0]
    sample = int(click_until(driver, point, "document.getElementById('sample-panel').dataset.sample"))
    assert sample in shown
    lookup = SampleLookup(small_dataset[0])
    text = driver.execute_script("return document.getElementById('sample-text').textContent;")
    assert text == lookup.text(sample)
    visits = wait_for(driver, "document.getElementById('sample-plot').data && document.getElementById('sample-plot').data[0].x")
    assert visits == [0, 1, 2, 3]
    facts = driver.find_element('id', 'sample-facts').text
    assert facts.startswith(f'domain {lookup.domain(sample)} · 4 visits')


def test_the_maps_axis_colour_and_domain_can_be_changed(page):
    from selenium.webdriver.support.ui import Select

    driver, _ = page
    total = int(driver.execute_script("return fetch('/api/overview').then(r => r.json()).then(o => o.samples);"))

    def drawn(kind: str, count: int | None = None) -> None:
        wait_for(driver, f"document.getElementById('map').dataset.kind === '{kind}'"
                 + ('' if count is None else f" && document.getElementById('map').dataset.count === '{count}'"))

    Select(driver.find_element('id', 'map-y')).select_by_value('mean_rel_weight')  # a new axis: the whole map again
    drawn('bins', total)
    assert driver.execute_script("return document.getElementById('map').layout.yaxis.title.text;") == \
        'mean weight (x uniform) after warm-up'
    Select(driver.find_element('id', 'map-color')).select_by_value('weight')
    wait_for(driver, "document.getElementById('map').data[0].colorscale !== undefined && "
                     "document.getElementById('map').data[0].zmid === 1")
    Select(driver.find_element('id', 'map-domain')).select_by_visible_text('docs')  # one domain: few enough for points
    docs = int(driver.execute_script("return fetch('/api/map?domain=1').then(r => r.json()).then(m => m.count);"))
    drawn('points' if docs <= MAX_POINTS else 'bins', docs)
    Select(driver.find_element('id', 'map-domain')).select_by_value('')
    Select(driver.find_element('id', 'map-color')).select_by_value('domain')
    Select(driver.find_element('id', 'map-y')).select_by_value('loss_std')
    driver.find_element('id', 'map-reset').click()
    drawn('bins', total)


def test_a_curation_threshold_changes_the_counts_to_reweigh_curates(page, tmp_path, capsys):
    driver, run = page
    before = driver.execute_script("return document.getElementById('curation-panel').dataset.version;")
    kept_before = _kept(driver)
    threshold = driver.find_element('id', 'drop-below')
    threshold.clear()
    threshold.send_keys('0.5')
    wait_for(driver, f"document.getElementById('curation-panel').dataset.version !== '{before}' && "
                     "document.getElementById('curation-command').textContent.includes('--drop-below 0.5')")
    kept = _kept(driver)
    assert kept != kept_before and kept['boilerplate'][0] < kept_before['boilerplate'][0]
    out = tmp_path / 'curated'
    assert main(['curate', str(run), '--out', str(out), '--drop-below', '0.5']) == 0
    capsys.readouterr()
    curated = read_manifest(out)
    assert kept == {d.name: [d.sequences['train'], d.tokens['train']] for d in curated.domains}
    examples = driver.find_elements('css selector', '#curation-examples .example')
    assert examples and all('weight below 0.5' in e.text for e in examples)
    assert driver.find_element('id', 'curation-error').text == ''
    threshold.clear()
    threshold.send_keys('-1')  # an impossible rule: said on the page, the table left as it was
    wait_for(driver, "document.getElementById('curation-error').textContent.includes('--drop-below must be a number > 0')")


def _kept(driver) -> dict[str, list[int]]:
    rows = driver.find_elements('css selector', '#curation-table tbody tr')
    return {row.get_attribute('data-domain'): [int(row.find_element('class name', c).text.replace(',', ''))
                                               for c in ('kept', 'kept-tokens')] for row in rows}


def test_the_html_report_renders_offline_and_a_point_shows_its_text(page, tmp_path, capsys):
    from selenium.webdriver.common.action_chains import ActionChains

    driver, run = page  # last: it leaves the app's page
    assert main(['analyze', str(run), '--out', str(tmp_path / 'analysis')]) == 0
    capsys.readouterr()
    driver.get((tmp_path / 'analysis' / 'report.html').as_uri())  # a file: nothing is served
    wait_for(driver, "document.querySelectorAll('.plotly-graph-div .main-svg').length >= 3")
    graphs = driver.execute_script("return document.querySelectorAll('.plotly-graph-div').length;")
    assert graphs == 3  # domains over training, weight quantiles, the data map
    point = driver.execute_script("return document.querySelectorAll('.plotly-graph-div')[2].querySelector('.point');")
    ActionChains(driver).move_to_element(point).perform()
    hover = wait_for(driver, "(document.querySelector('.hoverlayer .hovertext') || {}).textContent")
    assert hover.startswith('sample ') and 'mean loss' in hover
