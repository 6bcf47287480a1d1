//! Reference floor for bench/udp_hold.py (issue 25 item 1): the least a UDP relay thread costs at a given pace on this machine, doing nothing but relaying.
//
// One thread. At a fixed period it sleeps (clock_nanosleep on absolute
// deadlines, so the period does not drift), takes everything queued with one
// recvmmsg and sends it on with one GSO send per destination; with period 0 it
// waits in poll() and relays each datagram as it arrives. No TS parsing, no
// statistics, no runtime: whatever castpoint costs above this is its own.
//
// usage: lean_relay IN_PORT PERIOD_US DEST_PORT [DEST_PORT...]   (127.0.0.1 only)
// Built by bench/udp_hold.py with the machine's cc (`--lean`).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define MAXM 64
#define DG 2048
static unsigned char bufs[MAXM][DG];
int main(int argc, char **argv) {
  if (argc < 4 || argc - 3 > 16) return 2;
  int in = socket(AF_INET, SOCK_DGRAM, 0);
  int rb = 4 << 20;
  setsockopt(in, SOL_SOCKET, SO_RCVBUF, &rb, sizeof rb);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(in, (void *)&a, sizeof a)) { perror("bind"); return 1; }
  long period = atol(argv[2]) * 1000;
  int nd = argc - 3;
  struct sockaddr_in d[16];
  for (int i = 0; i < nd; i++) {
    d[i] = a;
    d[i].sin_port = htons(atoi(argv[3 + i]));
  }
  int out = socket(AF_INET, SOCK_DGRAM, 0);
  struct mmsghdr m[MAXM];
  struct iovec iv[MAXM];
  for (int i = 0; i < MAXM; i++) {
    iv[i].iov_base = bufs[i];
    iv[i].iov_len = DG;
    memset(&m[i], 0, sizeof m[i]);
    m[i].msg_hdr.msg_iov = &iv[i];
    m[i].msg_hdr.msg_iovlen = 1;
  }
  struct timespec next;
  clock_gettime(CLOCK_MONOTONIC, &next);
  for (;;) {
    if (period) {
      next.tv_nsec += period;
      while (next.tv_nsec >= 1000000000) { next.tv_nsec -= 1000000000; next.tv_sec++; }
      clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    } else {
      struct pollfd p = {.fd = in, .events = POLLIN};
      poll(&p, 1, -1);
    }
    int n = recvmmsg(in, m, MAXM, MSG_DONTWAIT, NULL);
    if (n <= 0) {
      if (period) {  // fell behind or idle: resync so a stall does not burst
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > next.tv_sec + 1) next = now;
      }
      continue;
    }
    // one GSO send per destination when every datagram has the same size
    struct iovec sv[MAXM];
    int same = 1;
    for (int i = 0; i < n; i++) {
      sv[i].iov_base = bufs[i];
      sv[i].iov_len = m[i].msg_len;
      if (m[i].msg_len != m[0].msg_len) same = 0;
    }
    for (int k = 0; k < nd; k++) {
      if (same && n > 1) {
        char cb[CMSG_SPACE(sizeof(uint16_t))] = {0};
        struct msghdr h = {.msg_name = &d[k], .msg_namelen = sizeof d[k], .msg_iov = sv,
                           .msg_iovlen = n, .msg_control = cb, .msg_controllen = sizeof cb};
        struct cmsghdr *c = CMSG_FIRSTHDR(&h);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        *(uint16_t *)CMSG_DATA(c) = (uint16_t)m[0].msg_len;
        sendmsg(out, &h, 0);
      } else {
        for (int i = 0; i < n; i++) sendto(out, bufs[i], m[i].msg_len, 0, (void *)&d[k], sizeof d[k]);
      }
    }
  }
}
