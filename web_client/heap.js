/**
 * A binary heap ordered by a `before(a, b)` predicate (true when a pops first). The tokenizer's
 * merge agenda needs an exact, deterministic order.
 */
export class Heap {
  /**
   * @param {(a: any, b: any) => boolean} before
   * @param {any[]} [items] initial items, heapified in O(n)
   */
  constructor(before, items = []) {
    this.before = before;
    this.items = items;
    for (let i = (items.length >> 1) - 1; i >= 0; i--) this.sink(i);
  }

  get size() {
    return this.items.length;
  }

  push(item) {
    const items = this.items;
    items.push(item);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(items[i], items[parent])) break;
      [items[i], items[parent]] = [items[parent], items[i]];
      i = parent;
    }
  }

  /** The first item, or undefined when the heap is empty. */
  pop() {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (items.length > 0) {
      items[0] = last;
      this.sink(0);
    }
    return top;
  }

  sink(i) {
    const items = this.items;
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let best = i;
      if (l < items.length && this.before(items[l], items[best])) best = l;
      if (r < items.length && this.before(items[r], items[best])) best = r;
      if (best === i) return;
      [items[i], items[best]] = [items[best], items[i]];
      i = best;
    }
  }
}
