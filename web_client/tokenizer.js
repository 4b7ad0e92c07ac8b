/**
 * The bundle's sentencepiece BPE model in plain JS, id-for-id with Python sentencepiece 0.2.1.
 *
 * A port of sentencepiece's bpe::Model::SampleEncode (src/bpe_model.cc, alpha = 0) plus the
 * parts of SentencePieceProcessor::Encode our models use: the identity normaliser (which still
 * escapes " " as "▁"), user-defined symbols matched longest-first and never merged, and
 * byte fallback (a symbol outside the vocabulary becomes its UTF-8 bytes as <0xXX> pieces).
 * The wasm port of sentencepiece is 4 MB and disagrees with 0.2.1, hence this file.
 */

import { Heap } from "./heap.js";

const WHITESPACE = " ";
const ESCAPED_WHITESPACE = "\u2581"; // sentencepiece's "▁"
const KIND = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 };

/** True when merge a goes first: best score, then the leftmost (bpe_model.cc's agenda). */
function mergesBefore(a, b) {
  return a.score > b.score || (a.score === b.score && a.left < b.left);
}

export class Tokenizer {
  /**
   * @param {{model_type: string, byte_fallback: boolean, pieces: Array<[string, number, number]>,
   *          unk_id: number, pad_id: number, bos_id: number, eos_id: number}} spec tokenizer.json
   */
  constructor(spec) {
    if (spec.model_type !== "bpe") throw new Error(`tokenizer.json: model_type ${spec.model_type}, expected bpe`);
    this.pieces = spec.pieces.map(([piece]) => piece);
    this.unkId = spec.unk_id;
    this.padId = spec.pad_id;
    this.bosId = spec.bos_id;
    this.eosId = spec.eos_id;
    this.byteFallback = Boolean(spec.byte_fallback);
    this.mergeable = new Map(); // normal and user-defined pieces: piece -> [id, score]
    this.reserved = new Map(); // control, unknown and byte pieces: looked up, never merged into
    this.byteIds = new Array(256).fill(-1);
    const userDefined = [];
    spec.pieces.forEach(([piece, score, kind], id) => {
      if (kind === KIND.unused) throw new Error(`tokenizer.json: unused piece ${piece} is not supported`);
      if (kind === KIND.normal || kind === KIND.userDefined) this.mergeable.set(piece, [id, score]);
      else this.reserved.set(piece, id);
      if (kind === KIND.userDefined) userDefined.push(piece);
      if (kind === KIND.byte) this.byteIds[parseInt(piece.slice(3, 5), 16)] = id;
    });
    if (this.byteFallback && this.byteIds.includes(-1)) throw new Error("tokenizer.json: byte pieces missing");
    this.userDefined = userDefined.sort((a, b) => b.length - a.length); // longest match first
    this.utf8 = new TextEncoder();
    /** What each piece adds to a URL, as a byte string (one char per byte): runtime/tokenizer.py piece_bytes. */
    this.pieceBytes = spec.pieces.map(([piece, , kind]) => {
      if (kind === KIND.byte) return String.fromCharCode(parseInt(piece.slice(3, 5), 16));
      if (kind === KIND.control || kind === KIND.unknown) return "";
      return String.fromCharCode(...this.utf8.encode(piece.replaceAll(ESCAPED_WHITESPACE, WHITESPACE)));
    });
  }

  /** Piece ids for text, exactly as sentencepiece's encode(text) returns them. */
  encode(text) {
    const ids = [];
    for (const piece of this.segment(text.replaceAll(WHITESPACE, ESCAPED_WHITESPACE))) {
      const id = this.pieceToId(piece);
      if (id === this.unkId && this.byteFallback) {
        for (const byte of this.utf8.encode(piece)) ids.push(this.byteIds[byte]);
      } else {
        ids.push(id);
      }
    }
    return ids;
  }

  /** sentencepiece's PieceToId: reserved pieces first, then the vocabulary, else unk. */
  pieceToId(piece) {
    return this.reserved.get(piece) ?? this.mergeable.get(piece)?.[0] ?? this.unkId;
  }

  /** Split normalised text into initial symbols: user-defined pieces (frozen) or single code points. */
  initialSymbols(normalized) {
    const symbols = [];
    let pos = 0;
    while (pos < normalized.length) {
      const match = this.userDefined.find((piece) => normalized.startsWith(piece, pos));
      const size = match ? match.length : (normalized.codePointAt(pos) > 0xffff ? 2 : 1);
      const index = symbols.length;
      symbols.push({ piece: normalized.slice(pos, pos + size), prev: index - 1, next: -1, freeze: Boolean(match) });
      if (index > 0) symbols[index - 1].next = index;
      pos += size;
    }
    return symbols;
  }

  /** BPE: merge the best-scoring adjacent pair (leftmost on ties) until no pair is a piece. */
  segment(normalized) {
    const symbols = this.initialSymbols(normalized);
    const agenda = new Heap(mergesBefore);
    const maybeAdd = (left, right) => {
      if (left === -1 || right === -1 || symbols[left].freeze || symbols[right].freeze) return;
      const piece = symbols[left].piece + symbols[right].piece;
      const entry = this.mergeable.get(piece);
      if (entry) agenda.push({ left, right, score: entry[1], size: piece.length });
    };
    for (let i = 1; i < symbols.length; i++) maybeAdd(i - 1, i);
    while (agenda.size > 0) {
      const top = agenda.pop();
      const left = symbols[top.left], right = symbols[top.right];
      // A stale pair: one side was merged away since it was pushed.
      if (!left.piece || !right.piece || left.piece.length + right.piece.length !== top.size) continue;
      left.piece += right.piece;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = top.left;
      right.piece = "";
      maybeAdd(left.prev, top.left);
      maybeAdd(top.left, left.next);
    }
    const pieces = [];
    for (let i = symbols.length ? 0 : -1; i !== -1; i = symbols[i].next) pieces.push(symbols[i].piece);
    return pieces;
  }
}
