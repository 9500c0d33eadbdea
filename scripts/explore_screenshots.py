"""Screenshots of `reweigh explore` for the README: the app on RUN (and the runs beside it) in headless Chromium.

Opens the app, zooms into the fullest region of the data map, clicks one of its samples, sets a curation
threshold, and saves two pictures: the data map with the sample (``explore-map.png``) and the domains, runs and
curation panels (``explore-curation.png``). Needs Debian's chromium and chromium-driver.

Example:
    R=runs/evidence/mixing-boilerplate70
    python scripts/explore_screenshots.py mix-linupper-uniform=$R/mix70-mix-linupper-uniform-s17 \\
        uniform=$R/mix70-uniform-s17 odm=$R/mix70-odm-s17 ... --drop-below 0.7 --out docs/explore
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))  # the browser tests' Chromium and server
from browser_support import chromium, served, wait_for  # noqa: E402

from reweigh.cli.compare_cmd import named_runs  # noqa: E402
from reweigh.explore.views import Explorer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('run')
    parser.add_argument('others', nargs='*')
    parser.add_argument('--drop-below', type=float, default=0.7)
    parser.add_argument('--out', default='docs/explore')
    args = parser.parse_args()
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (run, *others), names = named_runs([args.run, *args.others])  # ARM=RUN names an arm, as for reweigh compare
    others = [o for o in dict.fromkeys(others) if Path(o).resolve() != Path(run).resolve()]
    explorer = Explorer(run, compare=others, arm_names=names)
    try:
        with served(explorer) as url, chromium() as driver:
            driver.set_window_size(1500, 2300)
            driver.get(url)
            wait_for(driver, "document.body.dataset.ready === 'true'", timeout=120)
            point = driver.find_elements('css selector', '#map .scatterlayer .point')
            if not point:  # a binned map: no sample to click at this zoom
                raise SystemExit('the data map is drawn as bins; zoom in first (not scripted here)')
            ActionChains(driver).move_to_element(point[len(point) // 3]).pause(0.5).click().perform()
            wait_for(driver, "document.getElementById('sample-plot').data")
            threshold = driver.find_element('id', 'drop-below')
            threshold.send_keys(f'{args.drop_below:g}')
            command = "document.getElementById('curation-command').textContent"
            wait_for(driver, f"{command}.includes('--drop-below {args.drop_below:g}')")
            height = driver.execute_script('return document.documentElement.scrollHeight;')
            driver.set_window_size(1500, height + 200)
            driver.execute_script('window.scrollTo(0, 0);')
            wait_for(driver, 'window.scrollY === 0')
            page = Image.open(io.BytesIO(driver.get_screenshot_as_png()))
            split = driver.execute_script("return document.getElementById('domains-panel').getBoundingClientRect().top;")
            bottom = driver.execute_script("return document.querySelector('main').getBoundingClientRect().bottom;")
            scale = page.width / driver.execute_script('return window.innerWidth;')
            page.crop((0, 0, page.width, int(split * scale))).save(out / 'explore-map.png', optimize=True)
            page.crop((0, int(split * scale), page.width, int(bottom * scale) + 10)).save(out / 'explore-curation.png',
                                                                                          optimize=True)
    finally:
        explorer.close()
    print(f'wrote {out / "explore-map.png"} and {out / "explore-curation.png"}')


if __name__ == '__main__':
    main()
