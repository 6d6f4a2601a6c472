/* libFuzzer target: api_token_verify must reject or accept any byte string
 * without crashing, leaking or reading out of bounds. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <sodium.h>

#include "api/token.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static unsigned char pk[API_TOKEN_PUBLIC_BYTES], sk[API_TOKEN_SECRET_BYTES];
    static int ready;
    struct api_token_claims claims;
    struct api_err err;
    const char *tok;
    size_t len;

    if (!ready) {
        if (sodium_init() < 0)
            return 0;
        crypto_sign_seed_keypair(pk, sk, (const unsigned char *)"shoal-fuzz-seed-shoal-fuzz-seed!");
        ready = 1;
    }
    api_token_verify(pk, (const char *)data, size, 1790000000, &claims, &err);
    if (api_bearer_token((const char *)data, size, &tok, &len) == 0)
        api_token_verify(pk, tok, len, 1790000000, &claims, &err);
    return 0;
}
