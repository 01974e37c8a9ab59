"""How the page looks: theme, CSS and head (app.py passes them to mount_gradio_app, since
Gradio 6 ignores them on Blocks when mounted)."""

from __future__ import annotations

import gradio as gr

UI_THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="slate", neutral_hue="slate")
# Gradio's upload box refuses a whole drop when one file is over its size ceiling
# (ui.upload_ceiling), with a toast that fades and a bare "Error" over the box. So the files
# over it are taken out of the drop before Gradio sees it, and said where the note under the
# photos goes; the rest are added. Any other refusal of a drop is said there too, and the
# "Error" cleared so the box takes photos again.
UPLOAD_REFUSED_JS = """<script>
(() => {
  const notice = () => document.querySelector("#upload-refused .i2m-refused");
  function say(words) {
    const target = notice();
    if (target && (target.hidden || target.textContent !== words)) {  // writing is a mutation too: once
      target.textContent = words;
      target.hidden = false;
    }
  }
  function hide() { const target = notice(); if (target) target.hidden = true; }
  function withoutHuge(files) {
    const target = notice();
    const ceiling = Number(target && target.dataset.ceiling) || Infinity;
    const huge = files.filter(f => f.size > ceiling);
    if (!huge.length) return null;
    const kept = new DataTransfer();
    files.filter(f => f.size <= ceiling).forEach(f => kept.items.add(f));
    const names = huge.map(f => `'${f.name}'`).join(", ");
    const many = huge.length > 1;
    say(`${names} ${many ? "are" : "is"} far over the ${target.dataset.limit} a photo may have here, so ` +
        `${many ? "they were" : "it was"} left out` + (kept.files.length ? "; the other photos were added." : "."));
    return kept.files;
  }
  document.addEventListener("change", (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || input.type !== "file" || !input.closest("#images")) return;
    if (input.dataset.i2mKept) { delete input.dataset.i2mKept; return; }  // our own, from a drop
    const kept = withoutHuge(Array.from(input.files || []));
    if (kept === null) { hide(); return; }
    input.files = kept;
    if (!kept.length) event.stopImmediatePropagation();
  }, true);
  document.addEventListener("drop", (event) => {
    const box = event.target.closest && event.target.closest("#images");
    if (!box || !event.dataTransfer) return;
    const kept = withoutHuge(Array.from(event.dataTransfer.files || []));
    if (kept === null) { hide(); return; }
    event.preventDefault();
    event.stopImmediatePropagation();
    const input = box.querySelector("input[type=file]");
    if (input && kept.length) {
      input.files = kept;
      input.dataset.i2mKept = "1";
      input.dispatchEvent(new Event("change", {bubbles: true}));
    }
  }, true);
  new MutationObserver(() => {  // any other refusal: say so, and clear the bare "Error"
    const box = document.getElementById("images");
    const clear = box && box.querySelector(".error") && box.querySelector(".clear-status button");
    if (!clear || clear.dataset.i2mClicked) return;
    say("Those files could not be added. Please try again, or with fewer files at once.");
    clear.dataset.i2mClicked = "1";
    clear.click();
  }).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>"""
UI_HEAD = ('<meta name="description" content="Turn photos into 3D models you can look at and download.">'
           + UPLOAD_REFUSED_JS)
UI_CSS = """
/* width: a flex item with auto margins shrinks to its content; at phone width the two
   columns would then sit side by side, wider than the screen */
.gradio-container { max-width: 1280px !important; width: 100% !important; margin: 0 auto !important; }
#intro p { margin: 0; }
.i2m-notice { padding: 10px 14px; border-radius: 8px; font-size: 15px; }
.i2m-error { background: #fdecec; color: #8a1c1c; border: 1px solid #f3b4b4; }
.i2m-refused { padding: 10px 14px; border-radius: 8px; font-size: 15px; background: #fdecec; color: #8a1c1c;
  border: 1px solid #f3b4b4; }
.i2m-refused[hidden] { display: none; }
#upload-refused:has(.i2m-refused[hidden]) { display: none; }  /* no empty gap while there is nothing to say */
.i2m-info { background: #eef5ff; color: #1d3f73; border: 1px solid #bcd4f6; }
.i2m-job-title { margin: 0 0 6px 0; font-size: 17px; font-weight: 700; }
.i2m-job-id { margin: 6px 0 0 0; font-size: 12px; color: var(--body-text-color-subdued); word-break: break-all; }
.i2m-job-id summary { cursor: pointer; }
.i2m-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.i2m-progress-bar { height: 100%; background: var(--primary-500); transition: width 0.4s ease; }
.i2m-job[data-state="failed"] .i2m-progress-bar { background: #d64545; }
.i2m-job[data-state="cancelled"] .i2m-progress-bar { background: var(--neutral-400); }
.i2m-progress-text { margin: 6px 0 0 0; font-weight: 600; }
.i2m-hint { margin: 4px 0 0 0; font-size: 13px; color: var(--body-text-color-subdued); }
#items { overflow-x: auto; }
#items th span { white-space: nowrap; }
/* the table is read, not edited: the body font, and words that wrap whole */
#items { --font-mono: var(--font); }
#items th, #items td, #items th *, #items td * { font-family: var(--font) !important; word-break: normal;
  overflow-wrap: break-word; }
/* all five examples in one row, as wide as the column: none cut off or hidden past an edge */
#examples .grid-container { grid-template-columns: repeat(5, minmax(0, 1fr)) !important; }
/* the results too, or one model alone filled the gallery, cut off, as a giant close-up */
#results .grid-container { grid-template-columns: repeat(5, minmax(0, 1fr)) !important; }
#examples .caption-label, #thumbs .caption-label { font-size: 11px; padding: 0 4px; bottom: 2px; max-width: 92%; }
#model input { text-overflow: ellipsis; padding-right: 28px; }
/* a choice that cannot be made looks it (Gradio draws a disabled radio like an enabled one) */
#mode label:has(input:disabled:not(:checked)) { opacity: 0.45; cursor: not-allowed; }
#mode label:has(input:disabled) { cursor: not-allowed; }
@media (max-width: 640px) {
  .gradio-container { padding: 6px !important; }
  #examples { height: 110px !important; }
  #results .grid-container { grid-template-columns: repeat(3, minmax(0, 1fr)) !important; }
  /* the viewer fits the model to its height; a tall, narrow canvas cuts off wide models */
  #viewer { height: 300px !important; }
  #items th, #items td, #items th *, #items td * { font-size: 12px !important; }
  #items th, #items td { padding: 6px 3px !important; }
  #items th span { white-space: normal; overflow: visible !important; text-overflow: clip !important; }
  #items th, #items th * { overflow-wrap: normal !important; }  /* "Time", never "Tim e" */
  /* short words stay whole ("100%", "Working"); only a long file name breaks */
  #items [role=gridcell]:not([data-col="0"]), #items [role=gridcell]:not([data-col="0"]) * {
    overflow-wrap: normal !important; word-break: normal !important; }
  #items [role=gridcell], #items .cell-wrap { padding-left: 1px !important; padding-right: 1px !important; }
  #items th, #items td, #items th *, #items td *, #items [role=gridcell] * { font-size: 11px !important; }
}
"""
