// Uploads one file with tus-js-client under Node, as a program would, for the tests in
// tests/test_tus_clients.py. One JSON argument:
//   {endpoint, file, token, chunkSize, urlStorage, metadata, abortAt, terminate}
// urlStorage (a JSON file) lets a second run find the upload the first one began and
// resume it; abortAt stops the upload once that many bytes were sent (terminate: and ends
// it on the server with DELETE, tus termination). No retries: a cut connection ends the
// run, and the test runs it again. Prints one JSON line: {url, link, offset} on success,
// {aborted, url} after abortAt, {error, status} on failure (exit code 1).
import fs from "node:fs";
import * as tus from "tus-js-client";

const options = JSON.parse(process.argv[2]);

function done(result, code = 0) {
  process.stdout.write(JSON.stringify(result) + "\n");
  process.exit(code);
}

const upload = new tus.Upload(fs.createReadStream(options.file), {
  endpoint: options.endpoint,
  chunkSize: options.chunkSize,
  retryDelays: null,
  headers: { "X-Auth-Token": options.token },
  metadata: options.metadata || {},
  urlStorage: new tus.FileUrlStorage(options.urlStorage),
  removeFingerprintOnSuccess: true,
  onProgress(sent) {
    if (options.abortAt && sent >= options.abortAt) {
      upload.abort(Boolean(options.terminate)).then(
        () => done({ aborted: true, url: upload.url }),
        (error) => done({ error: String(error), status: 0 }, 1),
      );
      options.abortAt = 0;
    }
  },
  onSuccess(payload) {
    done({
      url: upload.url,
      link: payload.lastResponse.getHeader("Paimon-Link"),
      offset: Number(payload.lastResponse.getHeader("Upload-Offset")),
    });
  },
  onError(error) {
    const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
    done({ error: String(error), status, url: upload.url }, 1);
  },
});

const previous = await upload.findPreviousUploads();
if (previous.length) upload.resumeFromPreviousUpload(previous[0]);
upload.start();
