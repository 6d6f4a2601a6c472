/*
 * api/jsonword.h: JSON strings eight bytes at a time, for the parser
 * (jsonin.c) and the writer (jsonout.c): which bytes of a word end or
 * escape a string. Pure.
 */
#ifndef SHOAL_API_JSONWORD_H
#define SHOAL_API_JSONWORD_H

#include <stdint.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "api_json_escaped_bytes reads the first byte in memory as the lowest"
#endif

#define API_JSON_WORD_HIGHS 0x8080808080808080ull

/* The bytes of X (eight, loaded from memory) that a JSON string cannot
 * hold as they are: below 0x20, '"' and '\\'. Each such byte's high bit is
 * set; bytes above the first may be flagged too (a borrow from it), so only
 * "none" and the lowest flag are exact, and they are all a caller may use. */
static inline uint64_t api_json_escaped_bytes(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull;
    uint64_t quote = x ^ (ones * '"'), backslash = x ^ (ones * '\\');
    return (((x - ones * 0x20) & ~x) | ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash)) &
           API_JSON_WORD_HIGHS;
}

#endif
