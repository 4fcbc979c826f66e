// Renders the generated OpenAPI document; self-contained so it works without any CDN, and a file of its own so
// that the CSP needs no inline script. Descriptions may use markdown `code` spans: shown as <code>.
const esc = s => String(s ?? "").replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const md = s => esc(s).replace(/`([^`]+)`/g, "<code>$1</code>");
function schemaText(schema, defs, depth = 0) {
  if (!schema) return "";
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    if (depth > 2) return name;
    return name + " " + schemaText(defs[name], defs, depth + 1);
  }
  if (schema.anyOf) return schema.anyOf.map(s => schemaText(s, defs, depth)).join(" | ");
  if (schema.type === "object" && schema.properties) {
    const req = new Set(schema.required || []);
    const pad = "  ".repeat(depth + 1);
    const lines = Object.entries(schema.properties).map(([k, v]) =>
      `${pad}${k}${req.has(k) ? "" : "?"}: ${schemaText(v, defs, depth + 1)}`);
    return "{\n" + lines.join("\n") + "\n" + "  ".repeat(depth) + "}";
  }
  if (schema.type === "array") return schemaText(schema.items, defs, depth) + "[]";
  if (schema.enum) return schema.enum.map(e => JSON.stringify(e)).join(" | ");
  return schema.type || "any";
}
fetch("openapi.json").then(r => r.json()).then(doc => {
  document.getElementById("desc").innerHTML = md(doc.info.description) + ` <small>v${esc(doc.info.version)}</small>`;
  const defs = doc.components.schemas, byTag = {};
  for (const [path, ops] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(ops))
      (byTag[op.tags[0]] ||= []).push({path, method: method.toUpperCase(), op});
  const root = document.getElementById("root");
  for (const [tag, ops] of Object.entries(byTag)) {
    let html = `<h2>${esc(tag)}</h2>`;
    for (const {path, method, op} of ops) {
      const params = (op.parameters || []).map(p =>
        `<tr><td><code>${esc(p.name)}</code></td><td>${esc(p.in)}</td><td>${p.required ? "yes" : ""}</td>` +
        `<td><code>${esc(schemaText(p.schema, defs))}</code> ${md(p.description || "")}</td></tr>`).join("");
      const body = op.requestBody ? `<p><b>Body</b></p><pre>${esc(schemaText(op.requestBody.content["application/json"].schema, defs))}</pre>` : "";
      const resp = Object.entries(op.responses).map(([code, r]) => {
        const s = r.content && r.content["application/json"] ? schemaText(r.content["application/json"].schema, defs) : "";
        return `<p><b>${esc(code)}</b> ${esc(r.description)}</p>` + (s && Number(code) < 400 ? `<pre>${esc(s)}</pre>` : "");
      }).join("");
      html += `<details><summary><span class="m ${method}">${method}</span>${esc(path)}<span class="sum">${md(op.summary)}</span></summary>
        <div class="body">${params ? `<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>${params}</table>` : ""}
        ${body}${resp}</div></details>`;
    }
    root.insertAdjacentHTML("beforeend", html);
  }
}).catch(err => { document.getElementById("desc").textContent = "Could not load openapi.json: " + err; });
