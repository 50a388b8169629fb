// Validates the API descriptions with the official tools:
//   docs/asyncapi.yaml  with @asyncapi/parser (AsyncAPI 3.0 schema + spectral rules);
//   docs/openapi.json   with @apidevtools/swagger-parser (OpenAPI 3.1 schema, $refs).
// Exits non-zero on any error (warnings are printed, not fatal). Run by scripts/api-test.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";
import SwaggerParser from "@apidevtools/swagger-parser";

const root = new URL("../../", import.meta.url);
let failed = false;

const asyncText = readFileSync(new URL("docs/asyncapi.yaml", root), "utf8");
const { document, diagnostics } = await new Parser().parse(asyncText);
// Severity: 0 error, 1 warning, 2 info, 3 hint.
for (const d of diagnostics) {
  const where = (d.path || []).join(".");
  const line = `asyncapi: [${["error", "warning", "info", "hint"][d.severity]}] ${d.code}: ${d.message} at ${where}`;
  if (d.severity === 0) { failed = true; console.error(line); } else if (d.severity === 1) console.warn(line);
}
if (!document) { failed = true; console.error("asyncapi: document did not parse"); }
else {
  const channels = document.channels().all().map((c) => c.id());
  const messages = document.allMessages().all().length;
  console.log(`asyncapi: valid AsyncAPI ${document.version()}: ${channels.length} channels (${channels.join(", ")}), ${messages} messages`);
}

try {
  const api = await SwaggerParser.validate(new URL("docs/openapi.json", root).pathname);
  console.log(`openapi: valid OpenAPI ${api.openapi}: ${Object.keys(api.paths).length} paths`);
} catch (err) {
  failed = true;
  console.error(`openapi: ${err.message}`);
}
process.exit(failed ? 1 : 0);
