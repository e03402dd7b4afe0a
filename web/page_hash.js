// The script and n kept in the page's address, so a pattern is shared as a link:
//   index.html#n=4096&z=BASE64URL   z: the script's UTF-8, deflate-raw compressed (CompressionStream)
//   index.html#n=4096&s=BASE64URL   s: the script's UTF-8 as is (browsers without CompressionStream)
// Both are read back everywhere CompressionStream exists; the page writes z when it can.
"use strict";

const pageHash = (() => {
  function bytesToBase64url(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function base64urlToBytes(text) {
    const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
    const binary = atob(padded);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; ++i) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  // bytes through a CompressionStream or DecompressionStream (`stream`), as one Uint8Array.
  async function pipeBytes(bytes, stream) {
    const response = new Response(new Blob([bytes]).stream().pipeThrough(stream));
    return new Uint8Array(await response.arrayBuffer());
  }

  const canCompress = typeof CompressionStream === "function" && typeof DecompressionStream === "function";

  // "n=4096&z=..." for the script and n.
  async function encode(script, n) {
    const utf8 = new TextEncoder().encode(script);
    if (canCompress) {
      const packed = await pipeBytes(utf8, new CompressionStream("deflate-raw"));
      return "n=" + n + "&z=" + bytesToBase64url(packed);
    }
    return "n=" + n + "&s=" + bytesToBase64url(utf8);
  }

  // {script, n} from a hash ("#n=...&z=..." or without the #); null fields where absent.
  // Throws an Error saying what is wrong with a damaged link.
  async function decode(hash) {
    const params = new URLSearchParams(hash.replace(/^#/, ""));
    const out = {script: null, n: null};
    if (params.has("n")) {
      const n = Number(params.get("n"));
      if (Number.isInteger(n) && n >= 1) out.n = n;
    }
    try {
      if (params.has("z")) {
        if (!canCompress) throw new Error("this browser has no DecompressionStream");
        const utf8 = await pipeBytes(base64urlToBytes(params.get("z")), new DecompressionStream("deflate-raw"));
        out.script = new TextDecoder("utf-8", {fatal: true}).decode(utf8);
      } else if (params.has("s")) {
        out.script = new TextDecoder("utf-8", {fatal: true}).decode(base64urlToBytes(params.get("s")));
      }
    } catch (e) {
      throw new Error("the link's script could not be read (" + e.message + "): was the address cut short?");
    }
    return out;
  }

  return {encode, decode};
})();
