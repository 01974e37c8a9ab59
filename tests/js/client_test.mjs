// Drives a running image2model through its named Gradio API with @gradio/client, as a
// JavaScript program would. Run by tests/test_js_client.py:
//   node tests/js/client_test.mjs <server url> <folder with duck.png, mug.png, vase.png, star.png>
// Asserts as it goes (a failed assert exits non-zero); the last line of stdout is a JSON
// summary for the Python side to check against the server's own records. Needs Node 20+
// (a global File). DEBUG_EVENTS=1 prints every event the client yields to stderr.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Client, handle_file } from "@gradio/client";

const [url, folder] = process.argv.slice(2);
const read = (name) => readFile(join(folder, name)); // a Buffer
const baseName = (href) => decodeURIComponent(new URL(href).pathname.split("/").pop());

// Submit /generate and collect every update ([status, files]) until the job is finished.
async function generate(client, images, onUpdate = async () => {}) {
	const updates = [];
	for await (const event of client.submit("/generate", { images, model: "local/relief" })) {
		if (event.type === "status" && event.stage === "error") throw new Error(event.message);
		if (process.env.DEBUG_EVENTS) console.error(event.type, event.stage ?? "", JSON.stringify(event.data ?? "").slice(0, 120));
		if (event.type === "data") {
			updates.push(event.data);
			await onUpdate(event.data);
		}
	}
	assert.ok(updates.length >= 1 && updates.at(-1)[0].finished, "/generate ended before the job finished");
	return updates;
}

async function rejects(promise) {
	try {
		await promise;
	} catch (error) {
		return error.message;
	}
	assert.fail("expected an error");
}

// events: submit() yields only "data" events unless "status" is asked for too (errors come as status)
const client = await Client.connect(url, { events: ["data", "status"] });
const duck = await read("duck.png");
const mug = await read("mug.png");

// /models: the catalog; the offline model works without a FAL key
const models = (await client.predict("/models")).data[0];
const local = models.find((m) => m.id === "local/relief");
assert.ok(local && local.available && local.default, JSON.stringify(models.map((m) => m.id)));

// /generate, named: a File made from a Buffer, and handle_file of a path
const named = await generate(client, [
	new File([duck], "duck.png", { type: "image/png" }),
	handle_file(join(folder, "mug.png")),
]);
const [status, files] = named.at(-1);
// files come only with the finished status (the client delivers that last update twice:
// from the last "generating" message and again from "complete")
for (const [s, f] of named) if (!s.finished) assert.equal(f, null, "an update before the end sent files");
assert.equal(status.state, "succeeded", JSON.stringify(status.items.map((i) => i.error)));
assert.deepEqual(status.items.map((i) => i.name), ["duck.png", "mug.png"]);
// the models only; the offline model's cut-out ("what the model saw") is in the status
const namedResults = ["duck.glb", "mug.glb"];
assert.deepEqual(files.map((f) => f.orig_name), namedResults);
assert.deepEqual(files.map((f) => baseName(f.url)), namedResults);
const glb = Buffer.from(await (await fetch(files[0].url)).arrayBuffer());
assert.equal(glb.subarray(0, 4).toString("latin1"), "glTF", "the download is not a GLB");

// /generate, nameless: a bare Buffer and a bare Blob (which the client uploads as "blob")
const nameless = await generate(client, [duck, new Blob([mug], { type: "image/png" })]);
const [blobStatus, blobFiles] = nameless.at(-1);
assert.equal(blobStatus.state, "succeeded", JSON.stringify(blobStatus.items.map((i) => i.error)));
assert.deepEqual(blobStatus.items.map((i) => i.name), ["image-1.png", "image-2.png"]);
assert.deepEqual(blobFiles.map((f) => f.orig_name),
	["image-1.glb", "image-2.glb"]);

// /job_status: the same status as the last update of /generate
const again = (await client.predict("/job_status", { job_id: status.job_id })).data[0];
assert.deepEqual(again, status);

// /cancel_job: stop a job of five photos as soon as it exists (the server has one worker)
const five = ["duck.png", "mug.png", "vase.png", "star.png", "duck.png"];
let cancelled = null;
const stopped = await generate(client, await Promise.all(five.map(async (name, n) =>
	new File([await read(name)], `${n}-${name}`, { type: "image/png" }))), async ([update]) => {
	if (cancelled === null) cancelled = (await client.predict("/cancel_job", { job_id: update.job_id })).data[0];
});
const [stoppedStatus, stoppedFiles] = stopped.at(-1);
assert.equal(cancelled.job_id, stoppedStatus.job_id);
assert.equal(stoppedStatus.state, "cancelled");
assert.ok(stoppedStatus.items.some((i) => i.state === "cancelled"), "no image was stopped");
assert.ok((stoppedFiles ?? []).length < five.length, "every image was made after the cancel");

// mistakes come back as readable errors
const unknown = await rejects(client.predict("/job_status", { job_id: "0".repeat(32) }));
assert.match(unknown, /No job with that id/);

console.log(JSON.stringify({
	named: status,
	named_files: files.map((f) => f.orig_name),
	nameless: blobStatus,
	cancelled: stoppedStatus,
	glb_bytes: glb.length,
}));
process.exit(0);
