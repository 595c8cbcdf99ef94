/* Stands in for libx265 beside the libheif that the Python wheel and the container ship.
 *
 * Debian's libheif links the x265 HEVC *encoder* (GPL-2.0-or-later); Obscura only ever
 * decodes HEIC (through libde265, LGPL-3.0) and never writes it. Shipping x265 would put
 * GPL code into an MIT/Apache-2.0 wheel and image for a function nobody calls, so
 * scripts/bundle-libheif builds this file instead, under the same file name and soname:
 * libheif's one import from x265, x265_api_get_<build>(), answers "no encoder", and a
 * HEVC encode through this libheif fails with libheif's own error ("Bit depth not
 * supported by x265") instead of running. Decoding HEIC and AVIF is unaffected.
 *
 *   cc -shared -fPIC -O2 -DX265_BUILD=199 -Wl,-soname,libx265.so.199 -o libx265.so.199 x265-absent.c
 */
#ifndef X265_BUILD
#error "define X265_BUILD, the number in the libx265.so.N libheif needs"
#endif
#define API_GET_(build) x265_api_get_##build
#define API_GET(build) API_GET_(build)

struct x265_api;

const struct x265_api *API_GET(X265_BUILD)(int bit_depth) {
    (void)bit_depth;
    return 0;
}
