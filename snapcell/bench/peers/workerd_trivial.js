// The static trivial worker of `snapcell bench`: `1 + 1` as the response body.
export default {
  fetch() {
    return new Response(String(1 + 1));
  },
};
