"""
The AMQP transport: L{txplatform.amqp.bus.AMQPBus}, an L{IBus} on RabbitMQ
through txamqp, with the message hot path framed directly.
"""
