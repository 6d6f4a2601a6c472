/* freeport: prints N free TCP ports on 127.0.0.1, one per line, for tests
 * that must pick ports before starting a daemon (etcd). All sockets stay
 * bound until every port is chosen, so the N ports differ. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1;
    int fds[64];

    if (n < 1 || n > 64) {
        fprintf(stderr, "usage: freeport [N<=64]\n");
        return 2;
    }
    for (int i = 0; i < n; i++) {
        struct sockaddr_in a;
        socklen_t len = sizeof(a);
        memset(&a, 0, sizeof(a));
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if ((fds[i] = socket(AF_INET, SOCK_STREAM, 0)) < 0 || bind(fds[i], (struct sockaddr *)&a, sizeof(a)) != 0 ||
            getsockname(fds[i], (struct sockaddr *)&a, &len) != 0) {
            perror("freeport");
            return 1;
        }
        printf("%d\n", ntohs(a.sin_port));
    }
    for (int i = 0; i < n; i++)
        close(fds[i]);
    return 0;
}
