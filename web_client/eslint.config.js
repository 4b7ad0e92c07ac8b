// Lint for the browser client: ESLint's recommended rules on ES modules in a browser or worker.
// Types are checked separately by `tsc -p jsconfig.json` (checkJs over the JSDoc).
import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["node_modules/**"] },
  js.configs.recommended,
  {
    files: ["**/*.js"],
    languageOptions: {
      ecmaVersion: 2025, // Float16Array (ES2025) is used where present: see canWriteF16 in safetensors.js
      sourceType: "module",
      globals: { ...globals.browser, ...globals.worker },
    },
    rules: {
      "no-unused-vars": ["error", { argsIgnorePattern: "^_" }],
      eqeqeq: ["error", "always"],
      "prefer-const": "error",
      "no-var": "error",
    },
  },
];
