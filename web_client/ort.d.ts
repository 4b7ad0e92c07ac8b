// Types of the onnxruntime-web build the server serves under /ort/ (web_client/package.json pins
// it). worker.js imports it by that URL path, which jsconfig.json's "paths" maps to this file.
export * from "onnxruntime-web";
