// Tables refreshed in place. The connections and webhooks tables are
// reloaded every few seconds; rebuilding them would swap the row (and its
// button) under the operator's pointer, so a click landing during a
// refresh would be lost. Instead a row is kept for as long as its key is
// listed and only its cells are rewritten.

/**
 * Shows `items` in `tbody`, in order, one row per `key(item)`: a listed
 * key keeps its row, a new one gets `create(item)`, a gone one is removed;
 * `update(tr, item)` then fills the row.
 */
export function syncRows(tbody, items, key, create, update) {
  const old = new Map();
  for (const tr of tbody.children) old.set(tr.dataset.key, tr);
  items.forEach((item, i) => {
    const k = String(key(item));
    let tr = old.get(k);
    if (!tr) {
      tr = create(item);
      tr.dataset.key = k;
    }
    update(tr, item);
    // Moved only when out of place: an unchanged table is not touched.
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  while (tbody.children.length > items.length) tbody.lastChild.remove();
}

/** A row of `n` empty cells. */
export function row(n) {
  const tr = document.createElement("tr");
  for (let i = 0; i < n; i++) tr.append(document.createElement("td"));
  return tr;
}

/** Writes `texts` into the row's first cells (their titles show what is cut off). */
export function setCells(tr, texts) {
  texts.forEach((text, i) => {
    const td = tr.children[i];
    if (td.textContent !== text) {
      td.textContent = text;
      td.title = text;
    }
  });
}

/** A button calling `onClick(button)`. */
export function button(label, cls, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = label;
  b.addEventListener("click", () => onClick(b));
  return b;
}
