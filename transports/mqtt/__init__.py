"""The MQTT 5 transport on paho-mqtt 2.x: ``mqtt://[user:password@]host[:1883]``; ``mqtts://``: TLS.

Topic mapping. A bus URI is its MQTT topic, unchanged. A bus pattern becomes the narrowest MQTT
filter that covers it, and every delivery is then matched locally against the bus pattern
(``bus.uri.matches``) before it is offered, so the broker's filter only has to be wide enough:

    bus pattern     MQTT filter
    a/b/c           a/b/c
    a/+/c           a/+/c
    a/*             a/#         (MQTT's a/# matches a itself, as BOSSWAVE's a/* does)
    a/+/*           a/+/#
    a/*/c           a/#         (a middle * keeps the segments before it, then #)

Bus subscriptions that map to the same filter share one MQTT subscription (reference counted,
unsubscribed when the last one closes). A subscription with a share group is the MQTT 5 shared
subscription ``$share/<group>/<filter>``, an MQTT subscription of its own beside a plain one to
the same filter; its deliveries carry the real topic and are matched locally like the others.
Each MQTT subscription carries an MQTT 5 subscription identifier, so a message that matches
overlapping filters is handed to each bus subscription once.

QoS. Publishes use QoS 1 by default (``qos=``): ``publish`` returns when the broker's PUBACK
arrives, and fails with ``TransportError`` on a refusing reason code (an ACL) or after
``timeout_s`` (10 s; also the bound on connect and subscribe). Subscriptions ask for the same QoS.
paho keeps at most 20 QoS 1 publishes in flight and queues the rest; Mosquitto's default Receive
Maximum is 20 too.

Persisted (retained) frames. ``persist=True`` publishes with the MQTT retain flag; an empty frame
deletes the retained message. Live subscriptions use retain handling 2, so the broker never sends
them retained messages. ``query`` subscribes with retain handling 0 (plus a unique sentinel topic),
publishes on the sentinel, and collects the deliveries flagged *retained* until the sentinel comes
back: the broker sends a subscription's retained messages before later messages on the same
connection. Live deliveries never carry the retain flag (retain-as-published is off), so retained
deliveries go to queries only and live ones to subscriptions only. Two limits come from the broker:
it queues a subscription's retained messages at once, so ``max_queued_messages`` (plus
``max_inflight_messages``) caps what one query can return, silently (``deploy/mosquitto.conf``
raises it); and with an ACL each client needs ``pattern readwrite !modelbus-query/%c/#`` for its
sentinels (``!`` cannot start a bus namespace, so no bus subscription ever sees them).

Will. ``connect(will=...)`` registers the frame as a retained QoS 1 Will: the broker publishes it
when the connection dies uncleanly (a crash, a keepalive timeout); ``close()`` disconnects cleanly,
so no Will is published.

Reconnect. paho's network thread reconnects with exponential backoff (``reconnect_min_s`` to
``reconnect_max_s``); every active filter is subscribed again on each CONNACK (sessions are clean).
A lost connection logs a warning; subscribe, query and publish wait for the connection up to their
timeout. A QoS 1 publish unacknowledged when the connection drops is resent after reconnecting
(at least once), even if the caller's wait has already timed out.

TLS. ``mqtts://`` (default port 8883) verifies the broker against ``ca_certs`` (or the system's CA
store), hostname included; ``certfile``/``keyfile`` add a client certificate.

Threads. paho runs its own network thread (``loop_start``); each callback hands its facts to the
event loop with ``call_soon_threadsafe``. Both sockets get TCP_NODELAY (Nagle plus delayed ACKs cost
~40-90 ms per QoS 1 round trip). paho and its errors stay inside this module. Passwords are never
logged: ``url`` and every message show the URL without one.

Modules: :mod:`~transports.mqtt.broker` (URL, TLS), :mod:`~transports.mqtt.topics` (patterns as
filters, subscription options), :mod:`~transports.mqtt.table` (the MQTT subscriptions held, by
filter and by identifier), :mod:`~transports.mqtt.gate` (when the connection may be used),
:mod:`~transports.mqtt.client` (the transport).
"""

from transports.mqtt.client import MqttTransport
from transports.mqtt.topics import mqtt_filter

__all__ = ["MqttTransport", "mqtt_filter"]
