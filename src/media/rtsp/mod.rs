//! RTSP pull inputs (IP cameras): RTSP client, RTP depacketizing, remux to MPEG-TS.
