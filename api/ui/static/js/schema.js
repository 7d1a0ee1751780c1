// The hyperparameters of each method, read from the API's own OpenAPI document so the form shows the server's
// defaults and limits (nothing is duplicated here).

let cached = null;

async function document() {
  cached = cached || fetch("/openapi.json").then((r) => r.json());
  return cached;
}

function resolve(doc, schema) {
  let s = schema;
  while (s && s.$ref) s = s.$ref.split("/").slice(1).reduce((node, key) => node[key], doc);
  return s;
}

function variants(doc, schema) {
  const s = resolve(doc, schema);
  const list = s.anyOf || s.oneOf;
  return list ? list.flatMap((v) => variants(doc, v)) : [s];
}

// One field: name, kind ("integer", "number", "boolean" or "text"), default, bounds, description, nullable.
function field(doc, name, schema) {
  const options = variants(doc, schema);
  const types = new Set(options.map((o) => o.type).filter((t) => t && t !== "null"));
  const main = options.find((o) => o.type && o.type !== "null") || {};
  const kind = types.size === 1 && ["integer", "number", "boolean"].includes(main.type) ? main.type : "text";
  return {
    name, kind, default: schema.default ?? null, nullable: options.some((o) => o.type === "null"),
    min: main.minimum ?? main.exclusiveMinimum, max: main.maximum ?? main.exclusiveMaximum,
    description: schema.description || "",
  };
}

// {method type: [field, ...]} for every method of the create body.
export async function methodFields() {
  const doc = await document();
  const create = doc.components.schemas.JobCreate;
  const out = {};
  for (const method of variants(doc, create.properties.method)) {
    const type = method.properties?.type?.const;
    if (!type) continue;
    const spec = resolve(doc, method.properties[type]);
    const hp = resolve(doc, spec.properties.hyperparameters);
    out[type] = Object.entries(hp.properties).map(([name, s]) => field(doc, name, s));
  }
  return out;
}
