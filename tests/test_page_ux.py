"""The page as a new user meets it (issue 14): each point in Chromium, with screenshots at a
laptop's 1280x800 and a phone's 390x844 in tests/artifacts/browser/ (ux-*.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import pytest

from image2model.web.page.view import table_rows
from tests.rest_helpers import encode, picture
from tests.test_browser import (  # noqa: F401 - open_page is a fixture
    DUCK,
    MUG,
    SQLITE,
    job_id_in_url,
    open_page,
    rows,
    shot,
    wait_for,
    wait_states,
)

SIZES = {"laptop": (1280, 800), "phone": (390, 844)}


def notice(page: Any) -> str:
    box = page.locator("#notice")
    return box.inner_text() if box.is_visible() else ""


@SQLITE
def test_photos_with_upper_case_extensions_and_heic_are_taken(
        live_server_factory, open_page, tmp_path: Path, backend) -> None:  # noqa: ANN001, F811
    """An iPhone's IMG_0001.HEIC (which Chromium gives no type) and a camera's DSC_0002.JPG."""
    heic, jpg, tif = tmp_path / "IMG_0001.HEIC", tmp_path / "DSC_0002.JPG", tmp_path / "SCAN.TIF"
    heic.write_bytes(encode(picture((400, 300), 1), "HEIF"))
    jpg.write_bytes(encode(picture((400, 300), 2), "JPEG"))
    tif.write_bytes(encode(picture((400, 300), 3), "TIFF"))
    server = live_server_factory(fal_key="")
    for device, (width, height) in SIZES.items():
        page = open_page(server, width=width, height=height)
        page.set_input_files("#images input[type=file]", [str(heic), str(jpg), str(tif)])
        wait_for(page, lambda: page.locator("#thumbs img").count() == 3, 15, "three thumbnails")
        names = page.locator("#thumbs").inner_text()
        assert "IMG_0001.HEIC" in names and "DSC_0002.JPG" in names and "SCAN.TIF" in names
        assert "Invalid file type" not in page.content()
        shot(page, f"ux-01-heic-upper-case-{device}")
    page.click("#generate")
    table = wait_states(page, {"Done"}, 3, timeout=60)
    assert sorted(r[0] for r in table) == ["DSC_0002.JPG", "IMG_0001.HEIC", "SCAN.TIF"]


@SQLITE
def test_recent_jobs_opened_and_closed_without_a_choice_say_nothing(
        live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    server = live_server_factory(fal_key="")
    page = open_page(server)
    page.set_input_files("#images input[type=file]", [DUCK])
    wait_for(page, lambda: page.locator("#thumbs img").count() == 1, 15, "a thumbnail")
    page.click("#generate")
    wait_states(page, {"Done"}, 1)
    page.reload()
    page.wait_for_selector("#generate")
    page.click("#recent-jobs")
    for device, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        page.click("#recent-pick input")
        wait_for(page, lambda: page.locator("ul.option-list li").count() >= 1, 10, "the recent jobs list")
        page.keyboard.press("Escape")  # closed without choosing
        page.click("#intro")  # and a click elsewhere, the other way people close it
        page.wait_for_timeout(800)
        shot(page, f"ux-05-recent-closed-{device}")
        assert "not found" not in notice(page), notice(page)


@SQLITE
def test_generate_brings_the_progress_into_view(live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    server = live_server_factory(fal_key="")
    for device, (width, height) in SIZES.items():
        page = open_page(server, width=width, height=height)
        page.set_input_files("#images input[type=file]", [DUCK])
        wait_for(page, lambda: page.locator("#thumbs img").count() == 1, 15, "a thumbnail")
        page.click("#advanced")  # the offline model's six settings push Generate down
        page.get_by_label("shape").first.wait_for()
        page.locator("#generate").scroll_into_view_if_needed()
        page.click("#generate")
        job_id_in_url(page)

        def in_view() -> bool:
            box = page.locator("#progress").bounding_box()
            return bool(box) and -2 <= box["y"] <= height - 60  # scrolled to its top, give or take
        wait_for(page, in_view, 5, f"the progress to come into view ({device})")
        shot(page, f"ux-07-progress-in-view-{device}")
        assert in_view(), f"the progress scrolled out of view again ({device})"


@SQLITE
@pytest.mark.parametrize("device", sorted(SIZES))
def test_waiting_photos_say_queued_with_their_place_not_working(
        fake_fal, live_server_factory, open_page, backend, device: str) -> None:  # noqa: ANN001, F811
    fake_fal.set_latency(0.0, 3.0)
    server = live_server_factory(workers=1, fal_concurrency=1)  # one photo at a time, in order: the others wait in line
    page = open_page(server, width=SIZES[device][0], height=SIZES[device][1])
    page.set_input_files("#images input[type=file]", [DUCK, MUG, DUCK.replace("duck", "vase")])
    wait_for(page, lambda: page.locator("#thumbs img").count() == 3, 15, "three thumbnails")
    page.click("#generate")

    def one_working() -> list[list[str]] | None:
        table = rows(page)
        return table if len(table) == 3 and table[0][1] == "Working" else None
    table = wait_for(page, one_working, 45, "the first photo to start")
    shot(page, f"ux-06-queued-{device}")
    assert [r[1] for r in table[1:]] == ["Queued", "Queued"]
    assert table[1][3].startswith("next in line") and table[2][3].startswith("2nd in line")
    assert "starts in about" in table[2][3]
    assert [r[2] for r in table[1:]] == ["", ""] and [r[4] for r in table[1:]] == ["", ""]  # no % and no clock
    # every column is on the screen, also on a phone (Message and Time were cut off)
    edges = page.evaluate("() => Array.from(document.querySelectorAll('#items th')).map(th => th.getBoundingClientRect().right)")
    assert len(edges) == 5 and max(edges) <= SIZES[device][0], edges
    wait_states(page, {"Done"}, 3, timeout=60)


@SQLITE
def test_the_job_is_headed_in_words_not_by_its_id(live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    server = live_server_factory(fal_key="")
    page = open_page(server)
    page.set_input_files("#images input[type=file]", [DUCK])
    wait_for(page, lambda: page.locator("#thumbs img").count() == 1, 15, "a thumbnail")
    page.click("#generate")
    job_id = job_id_in_url(page)
    wait_states(page, {"Done"}, 1)
    progress = page.locator("#progress")
    assert progress.inner_text().startswith("Your models")
    assert job_id not in progress.inner_text()  # folded away ...
    page.click("#progress summary")
    assert job_id in progress.inner_text()  # ... and there for whoever needs it
    for device, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        shot(page, f"ux-10-job-heading-{device}")


def test_the_queue_estimate_counts_places_per_core() -> None:
    """Unit level: positions count only waiting photos; the estimate is whole rounds of the
    photos that run at once times the usual time; a finished job shows no queue."""
    items = [{"name": f"p{n}.png", "state": state, "progress": 0.0, "message": message, "elapsed": 3.0}
             for n, (state, message) in enumerate([("running", "Running"), ("running", "Waiting for a free CPU core"),
                                                   ("queued", "Waiting for a worker"), ("queued", "Waiting for a worker")])]
    status = {"finished": False, "items": items}
    table = table_rows(status, typical=2.0, parallel=2)
    assert [r[1] for r in table] == ["Working", "Queued", "Queued", "Queued"]
    assert [r[3] for r in table[1:]] == ["next in line, starts in about 2.0 s", "2nd in line, starts in about 2.0 s",
                                         "3rd in line, starts in about 4.0 s"]
    assert table_rows({**status, "finished": True})[1][1] == "Working"


@SQLITE
def test_zip_and_other_formats_download_in_one_click(
        live_server_factory, open_page, tmp_path: Path, backend) -> None:  # noqa: ANN001, F811
    import zipfile

    from tests.test_browser import choose, download

    server = live_server_factory(fal_key="")
    for device, (width, height) in SIZES.items():
        page = open_page(server, width=width, height=height)
        if device == "laptop":
            page.set_input_files("#images input[type=file]", [DUCK, MUG])
            wait_for(page, lambda: page.locator("#thumbs img").count() == 2, 15, "two thumbnails")
            page.click("#generate")
            job = job_id_in_url(page)
        else:  # the same job, opened on a phone
            page.goto(f"{server.url}/?job={job}")
        wait_states(page, {"Done"}, 2, timeout=60)
        archive = download(page, "#download-zip", tmp_path / f"all-{device}.zip")  # one click, no second link
        assert {"duck.glb", "mug.glb"} <= set(zipfile.ZipFile(archive).namelist())
        choose(page, "format", "PLY")
        ply = download(page, "#convert", tmp_path / f"model-{device}.ply")
        assert ply.read_bytes().startswith(b"ply")
        assert page.locator("#export").is_hidden()  # no "Your download" row left behind
        shot(page, f"ux-02-one-click-downloads-{device}")


@SQLITE
def test_the_model_picker_names_each_model_once_and_a_fixed_mode_looks_fixed(
        live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    """Point 10: the picker showed "name — description", cut off, with the description again
    below it; the "several views" choice the offline model cannot make looked clickable."""
    from image2model.providers.catalog import catalog

    server = live_server_factory(fal_key="")
    for device, (width, height) in SIZES.items():
        page = open_page(server, width=width, height=height)
        field = page.locator("#model input")
        shown = field.input_value()
        assert shown == catalog()["local/relief"].label, shown
        assert page.evaluate("(el) => el.scrollWidth <= el.clientWidth", field.element_handle()), "name cut off"
        assert catalog()["local/relief"].description in page.locator("#model-info").inner_text()

        def opacity(text: str) -> float:
            label = page.locator("#mode label", has_text=text)
            assert label.locator("input").is_disabled()
            return float(label.evaluate("(el) => getComputedStyle(el).opacity"))
        assert opacity("several views") < 0.6 <= opacity("One model per image")
        shot(page, f"ux-10-model-and-mode-{device}")


def test_settings_help_is_in_plain_words() -> None:
    """Point 10: the advanced settings' labels and help avoid the jargon they had."""
    from image2model.providers.catalog import catalog
    from image2model.web.page.form import param_label

    jargon = ("diffusion", "octree", "sampling", "mesh grid", "physically based", "polygon", "pbr-ready",
              "grid cells", "simplifying", "pbr texture")
    for spec in catalog().values():
        words = [spec.description] + [f"{param_label(p)}: {p.help}" for p in spec.params]
        for text in words:
            assert not [w for w in jargon if w in text.lower()], (spec.id, text)
        assert not [p.name for p in spec.params if "PBR" in param_label(p)], spec.id


@SQLITE
def test_one_visitor_cannot_start_jobs_without_end(live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    """Point 11: the page counts a visitor's job starts in the REST upload's budget (here 2 a
    minute); a refused start says why in words and creates nothing. A mistake is not counted."""
    server = live_server_factory(fal_key="", rate_limit_upload="2/minute")
    page = open_page(server)
    page.click("#generate")  # no photos: a mistake, said next to the box, not counted
    for round_ in range(2):
        page.set_input_files("#images input[type=file]", [DUCK])
        wait_for(page, lambda: page.locator("#thumbs img").count() == 1, 15, "a thumbnail")
        page.click("#generate")
        wait_for(page, lambda: len(server.runtime.store.all_job_ids()) == round_ + 1, 15, f"job {round_ + 1}")
        wait_states(page, {"Done"}, round_ + 1)
    # clicked at once: the watcher's finishing update, which clears out-of-date notices, was
    # repeated by Gradio as the watcher ended and wiped a refusal shown meanwhile
    for device, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        page.click("#generate")
        wait_for(page, lambda: "as many jobs as this site takes" in notice(page), 10, "the refusal")
        page.wait_for_timeout(1500)
        assert "try again in" in notice(page), "the refusal was wiped"
        shot(page, f"ux-11-rate-limited-{device}")
    # an example clicked now says the same, and leaves the box as it was (it matches the results)
    page.click("#intro")
    page.wait_for_timeout(300)
    before = page.locator("#images").inner_text()
    page.locator("#examples button", has_text="Vase").click()
    wait_for(page, lambda: "as many jobs as this site takes" in notice(page), 10, "the refusal for the example")
    page.wait_for_timeout(1500)
    assert "as many jobs as this site takes" in notice(page), "the refusal went away"
    assert page.locator("#images").inner_text() == before and "vase" not in before
    assert len(server.runtime.store.all_job_ids()) == 2


@SQLITE
def test_a_full_queue_refuses_new_jobs_in_words(live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    """Point 11: with max_waiting_images photos waiting (no worker here, so they stay), a new
    job is refused with the count and what would still fit."""
    server = live_server_factory(fal_key="", embedded_worker=False, max_waiting_images=3)
    first = open_page(server)
    first.set_input_files("#images input[type=file]", [DUCK, MUG])
    wait_for(first, lambda: first.locator("#thumbs img").count() == 2, 15, "two thumbnails")
    first.click("#generate")
    job_id_in_url(first)
    for device, (width, height) in SIZES.items():
        page = open_page(server, width=width, height=height)  # another visitor
        page.set_input_files("#images input[type=file]", [DUCK, MUG])
        wait_for(page, lambda: page.locator("#thumbs img").count() == 2, 15, "two thumbnails")
        page.click("#generate")
        wait_for(page, lambda: "busy" in notice(page), 10, f"the busy notice, not {notice(page)!r} ({server.runtime.store.queued_count()} waiting)")
        assert "2 photos are already waiting" in notice(page) and "Up to 1 photo would fit now" in notice(page)
        shot(page, f"ux-11-queue-full-{device}")
    assert len(server.runtime.store.all_job_ids()) == 1


@SQLITE
def test_files_that_cannot_be_used_are_explained_and_can_be_left_out(
        live_server_factory, open_page, tmp_path: Path, backend) -> None:  # noqa: ANN001, F811
    """Points 3 and 4: a photo over the size limit and a text file are said in our words under
    the box, which keeps the good photo and stays usable; Generate points to one button that
    leaves out what cannot be used, and the job then runs on the rest."""
    server = live_server_factory(fal_key="", max_image_mb=0.015)  # the mug (9 KB) fits, the duck (19 KB) not
    notes = tmp_path / "notes.txt"
    notes.write_text("a shopping list")
    page = open_page(server)
    page.set_input_files("#images input[type=file]", [MUG, DUCK, str(notes)])
    note = page.locator("#upload-note")
    wait_for(page, lambda: note.is_visible() and "notes.txt" in note.inner_text(), 15, "the upload note")
    said = note.inner_text()
    assert "'duck.png' is 18 KB; the limit is 15 KB per image" in said, said
    assert "'notes.txt' is not an image" in said and "Mb" not in said
    assert page.locator("#images .error").count() == 0, "the box shows a bare Error"
    wait_for(page, lambda: page.locator("#thumbs img").count() == 1, 10, "the mug's thumbnail")  # still there
    leave_out = page.locator("#leave-out")
    assert leave_out.is_visible()
    page.click("#generate")
    wait_for(page, lambda: "Leave out the ones that cannot be used" in notice(page), 10, "the pointer to the button")
    for device, (width, height) in SIZES.items():
        page.set_viewport_size({"width": width, "height": height})
        shot(page, f"ux-03-files-that-cannot-be-used-{device}")
    leave_out.click()
    wait_for(page, lambda: not note.is_visible() and not leave_out.is_visible(), 15, "the note and button to go")
    def listed() -> str:
        return page.locator("#images").inner_text().replace("\n", "")  # names are drawn as "mug" + ".png"
    wait_for(page, lambda: "mug.png" in listed(), 10, "the mug to stay in the box")
    assert "duck.png" not in listed() and "notes.txt" not in listed()
    page.click("#generate")
    table = wait_states(page, {"Done"}, 1)
    assert [r[0] for r in table] == ["mug.png"]
    shot(page, "ux-04-left-out-and-made")


@SQLITE
def test_a_photo_far_over_the_limit_is_left_out_of_the_drop_in_words(
        live_server_factory, open_page, tmp_path: Path, backend) -> None:  # noqa: ANN001, F811
    """Point 3: far over the limit (over the upload box's own ceiling, 4x the limit), Gradio
    refused the whole drop with a toast that faded and a bare "Error". Now that file is left
    out before Gradio sees it, said in words that stay, and the other photos are added, both
    from the file picker and from a drag and drop."""
    server = live_server_factory(fal_key="", max_image_mb=0.015)  # the upload box takes 4x: 61 KB
    huge = tmp_path / "huge.png"
    huge.write_bytes(Path(DUCK).read_bytes() + bytes(100_000))
    for device, (width, height) in SIZES.items():
        page = open_page(server, width=width, height=height)
        if device == "laptop":
            page.set_input_files("#images input[type=file]", [MUG, str(huge)])
        else:  # dropped onto the box: a DataTransfer the page builds, as a drag from the desktop gives
            page.evaluate("""([big, small]) => {
                const files = new DataTransfer();
                files.items.add(new File([new Uint8Array(big)], "huge.png", {type: "image/png"}));
                files.items.add(new File([new Uint8Array(small)], "mug.png", {type: "image/png"}));
                const zone = document.querySelector("#images button.upload-container");
                zone.dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));
            }""", [list(huge.read_bytes()), list(Path(MUG).read_bytes())])
        refused = page.locator("#upload-refused .i2m-refused")
        wait_for(page, refused.is_visible, 15, "the refusal in words")
        assert refused.inner_text() == ("'huge.png' is far over the 15 KB a photo may have here, so it was left out; "
                                        "the other photos were added.")
        wait_for(page, lambda: page.locator("#thumbs img").count() == 1, 15, "the mug, added")
        assert page.locator("#images .error").count() == 0
        assert "exceed the maximum allowed size" not in page.content()  # Gradio never saw it
        page.wait_for_timeout(5000)  # a toast would have faded by now; these words stay
        assert refused.is_visible()
        shot(page, f"ux-03-huge-left-out-{device}")
        page.set_input_files("#images input[type=file]", [DUCK])  # the next pick starts afresh
        wait_for(page, lambda: not refused.is_visible(), 10, "the old words to go")


@SQLITE
def test_examples_are_pictures_and_one_is_a_real_photo(live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    """Point 9: the examples are thumbnails people recognise (not text chips), one of them a real
    photo shipped under CC0 (image2model/examples/LICENSES.md); a click runs it."""
    from image2model.examples import EXAMPLES, EXAMPLES_DIR

    licences = (EXAMPLES_DIR / "LICENSES.md").read_text()
    assert all(name in licences for example in EXAMPLES for name in example.files), "a picture without its source"
    server = live_server_factory(fal_key="")
    for device, (width, height) in SIZES.items():
        page = open_page(server, width=width, height=height)
        items = page.locator("#examples button")
        wait_for(page, lambda: items.count() == len(EXAMPLES), 10, "every example")
        assert [items.nth(n).inner_text().strip() for n in range(items.count())] == [e.title for e in EXAMPLES]
        frame = page.locator("#examples").bounding_box()
        for n in range(items.count()):  # one row, none cut off at the gallery's edges
            box = items.nth(n).bounding_box()
            assert frame["x"] - 1 <= box["x"] and box["x"] + box["width"] <= frame["x"] + frame["width"] + 1, (n, box)
            assert abs(box["y"] - items.nth(0).bounding_box()["y"]) < 2, (n, box)
        for n in range(items.count()):
            items.nth(n).scroll_into_view_if_needed()
            wait_for(page, lambda n=n: items.nth(n).locator("img").evaluate("i => i.complete && i.naturalWidth > 0"),
                     10, f"example {n} to show its picture")
        page.locator("#examples-title").scroll_into_view_if_needed()
        shot(page, f"ux-09-examples-{device}")
    page.locator("#examples button", has_text="Coffee").click()
    table = wait_states(page, {"Done"}, 1)
    assert table[0][0] == "coffee.jpg"
    job = server.runtime.service.get(job_id_in_url(page))
    assert job.model == "local/relief" and job.items[0].files, "the photo made no model"


def gallery_pictures(page: Any) -> list[dict[str, Any]]:
    """Each results-gallery entry: its caption, picture address and decoded size."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('#results button')).map(b => {
        const img = b.querySelector('img');
        return {caption: b.innerText.trim(), src: img ? img.getAttribute('src') : '',
                width: img && img.complete ? img.naturalWidth : 0};
    })""")


@SQLITE
def test_every_finished_model_is_in_a_gallery_and_a_click_shows_it(
        live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    """Point 8: a picture of each finished model (rendered from the GLB for the offline model,
    whose own preview is the cut-out), captioned with its file; a click opens it in the viewer."""
    server = live_server_factory(fal_key="")
    vase = DUCK.replace("duck", "vase")
    for device, (width, height) in SIZES.items():
        page = open_page(server, width=width, height=height)
        if device == "laptop":
            page.set_input_files("#images input[type=file]", [DUCK, MUG, vase])
            wait_for(page, lambda: page.locator("#thumbs img").count() == 3, 15, "three thumbnails")
            page.click("#generate")
            job = job_id_in_url(page)
        else:
            page.goto(f"{server.url}/?job={job}")
        wait_states(page, {"Done"}, 3, timeout=60)
        pictures = wait_for(page, lambda: (p := gallery_pictures(page)) and len(p) == 3 and all(e["width"] for e in p)
                            and p, 15, "three pictures in the gallery")
        assert [p["caption"] for p in pictures] == ["duck.glb", "mug.glb", "vase.glb"]
        assert all(".thumbnail.png" in p["src"] for p in pictures), pictures  # rendered, not the cut-outs
        page.locator("#results button", has_text="vase.glb").click()
        wait_for(page, lambda: "vase.glb" in page.locator("#stats").inner_text(), 10, "the vase in the viewer")
        assert page.locator("#result-pick").count() == 0  # no dropdown of file names any more
        page.locator("#results").scroll_into_view_if_needed()
        shot(page, f"ux-08-results-gallery-{device}")
    thumb = page.request.get(server.url + pictures[0]["src"] if pictures[0]["src"].startswith("/")
                             else pictures[0]["src"])
    from PIL import Image
    import io
    picture = Image.open(io.BytesIO(thumb.body())).convert("RGBA")
    assert picture.size == (256, 256) and 0.05 < (np.asarray(picture)[..., 3] > 0).mean() < 0.95  # a model, not a blank


@SQLITE
def test_a_hosted_models_own_preview_is_its_gallery_picture(
        fake_fal, live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    server = live_server_factory()
    page = open_page(server)
    from tests.test_browser import choose_model

    choose_model(page, "Tripo 2.5", "Tripo 2.5: coloured models")
    page.set_input_files("#images input[type=file]", [DUCK])
    wait_for(page, lambda: page.locator("#thumbs img").count() == 1, 15, "a thumbnail")
    page.click("#generate")
    wait_states(page, {"Done"}, 1, timeout=60)
    pictures = wait_for(page, lambda: (p := gallery_pictures(page)) and p[0]["width"] and p, 15, "the picture")
    assert pictures[0]["caption"] == "duck.glb" and ".preview.png" in pictures[0]["src"], pictures


@SQLITE
def test_the_viewer_frames_a_tall_thin_model_whole(live_server_factory, open_page, tmp_path: Path, backend) -> None:  # noqa: ANN001, F811
    """Point 8: a pole four times as tall as the photo is wide was cut off at the top and the
    bottom of the viewer (Gradio's viewer frames by width); now it fits, at both widths."""
    import io

    from PIL import Image, ImageDraw

    from tests.test_browser import wait_rendered

    photo = Image.new("RGB", (400, 800), (245, 245, 240))
    ImageDraw.Draw(photo).rectangle((180, 40, 220, 760), fill=(200, 40, 40))
    pole = tmp_path / "pole.png"
    photo.save(pole)
    server = live_server_factory(fal_key="")
    for device, (width, height) in SIZES.items():
        page = open_page(server, width=width, height=height)
        page.set_input_files("#images input[type=file]", [str(pole)])
        wait_for(page, lambda: page.locator("#thumbs img").count() == 1, 15, "a thumbnail")
        page.click("#generate")
        wait_states(page, {"Done"}, 1)
        wait_rendered(page, f"ux-08-tall-model-{device}")
        page.wait_for_timeout(1000)  # the camera settles after the model loads
        canvas = np.asarray(Image.open(io.BytesIO(page.locator("#viewer canvas").first.screenshot())).convert("RGB"))
        red_rows = np.where(((canvas[..., 0].astype(int) - canvas[..., 1]) > 60).any(axis=1))[0]
        assert len(red_rows) > canvas.shape[0] // 3, "the pole is too small to see"
        assert red_rows.min() > 2 and red_rows.max() < canvas.shape[0] - 3, (device, red_rows.min(), red_rows.max())
        shot(page, f"ux-08-tall-model-page-{device}")


README_SHOTS = {"laptop": "docs/page-laptop.png", "phone": "docs/page-phone.png"}


@SQLITE
def test_the_readme_screenshots_are_of_this_page(live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    """The README shows the page at both widths. This takes those pictures afresh (into
    tests/artifacts/browser/readme-*.png; copy them to docs/ when the page changes) and checks
    the README shows the committed ones."""
    from PIL import Image

    from image2model.examples import EXAMPLES
    from tests.test_browser import wait_rendered

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    server = live_server_factory(fal_key="")
    photos = [p for e in EXAMPLES[:4] for p in e.paths]  # the coffee photo, duck, mug, vase
    for device, (width, height) in SIZES.items():
        page = open_page(server, width=width, height=height)
        if device == "laptop":
            page.set_input_files("#images input[type=file]", photos)
            wait_for(page, lambda: page.locator("#thumbs img").count() == len(photos), 15, "the thumbnails")
            page.click("#generate")
            job = job_id_in_url(page)
        else:
            page.goto(f"{server.url}/?job={job}")
        wait_states(page, {"Done"}, len(photos), timeout=60)
        wait_for(page, lambda: len(gallery_pictures(page)) == len(photos) and all(
            p["width"] for p in gallery_pictures(page)), 15, "the results gallery")
        wait_rendered(page, f"readme-viewer-{device}")
        page.wait_for_timeout(1000)
        # the highlighted picture is the model in the viewer, whichever photo finished first
        chosen = page.locator("#results button.selected")
        assert chosen.count() == 1 and chosen.inner_text().strip() in page.locator("#stats").inner_text()
        shot(page, f"readme-{device}")
        assert f"]({README_SHOTS[device]})" in readme, f"the README does not show {README_SHOTS[device]}"
        committed = Image.open(root / README_SHOTS[device])
        assert committed.width == width, (README_SHOTS[device], committed.size)


@SQLITE
def test_too_many_photos_are_said_as_added_and_one_button_keeps_the_first(
        live_server_factory, open_page, backend) -> None:  # noqa: ANN001, F811
    """Point 4, by count: the note speaks of photos added (not "sent"), and the button says
    what it does: keep the first ones."""
    server = live_server_factory(fal_key="", max_images=3)
    page = open_page(server)
    vase = DUCK.replace("duck", "vase")
    star = DUCK.replace("duck", "star")
    page.set_input_files("#images input[type=file]", [DUCK, MUG, vase, star])
    note = page.locator("#upload-note")
    wait_for(page, lambda: note.is_visible() and "You added 4 photos; the limit is 3 per job." in note.inner_text(),
             15, "the count note")
    button = page.locator("#leave-out")
    assert button.inner_text().strip() == "Keep the first 3 photos"
    shot(page, "ux-04-too-many")
    button.click()
    wait_for(page, lambda: not note.is_visible(), 15, "the note to go")
    wait_for(page, lambda: page.locator("#thumbs img").count() == 3, 15, "three photos kept")
    assert "star.png" not in page.locator("#thumbs").inner_text()


def test_a_cancelled_photo_shows_no_share_done_and_no_time() -> None:
    """A photo cancelled while it waited for a core read "Cancelled 2% 8.5 s", as if it had run."""
    item = {"name": "p.png", "state": "cancelled", "progress": 2.0, "message": "Cancelled", "elapsed": 8.5}
    done = {"name": "q.png", "state": "succeeded", "progress": 100.0, "message": "Done", "elapsed": 1.2}
    assert table_rows({"finished": True, "items": [item, done]}) == [
        ["p.png", "Cancelled", "", "Cancelled", ""], ["q.png", "Done", "100%", "Done", "1.2 s"]]
