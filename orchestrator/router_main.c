int main(void) { return 1; } /* placeholder until written this session */
