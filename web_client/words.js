/**
 * Training numbers in words people understand; main.js shows these first and the raw numbers
 * beside them. No DOM here.
 *
 * The loss is the mean cross-entropy per token (nats), so exp(loss) is the perplexity: how many
 * equally likely pieces the model is choosing between, on average, before each next piece of a
 * URL. "About 9 guesses per piece" reads better than "loss 2.2", and fewer guesses is better.
 */

/** Perplexity, exp(loss), rounded for reading: one decimal under 10, whole numbers above. */
export function guessesPerPiece(loss) {
  const guesses = Math.exp(loss);
  return guesses < 10 ? guesses.toFixed(1) : String(Math.round(guesses));
}

/**
 * How the last local training run changed the model's grip on this device's URLs.
 * @param {number|null} before loss on the local history before training
 * @param {number|null} after the same after training
 */
export function lossInWords(before, after) {
  if (before === null || after === null || before === undefined || after === undefined) {
    return "Not trained on your visits yet.";
  }
  const [was, now] = [guessesPerPiece(before), guessesPerPiece(after)];
  if (was === now) return `About the same: ${now} guesses per URL piece.`;
  const verdict = after < before ? "Better" : "Worse";
  return `${verdict} at predicting your URLs: ${now} guesses per piece, was ${was} (fewer is better).`;
}

/** A training run in progress, or its end; the batch loss goes last, in brackets. */
export function progressInWords({ stage, done, total, loss }, running) {
  if (!running) return "Done.";
  const percent = Math.round((100 * done) / total);
  return `Learning from your visits: ${percent}% — ${guessesPerPiece(loss)} guesses per piece `
    + `(${stage}: step ${done}/${total}, loss ${loss.toFixed(3)})`;
}

/** Bytes as megabytes with two decimals, the way the page reports transfers. */
export function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(2)} MB`;
}
