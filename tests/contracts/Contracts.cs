// The .NET records of orderflow's events: what a KafkaFlow consumer with
// System.Text.Json's default options (KafkaFlow's JsonCoreSerializer)
// deserializes the `kafkaflow` format into (Events.Format = "kafkaflow",
// README ".NET interop"). Each event carries
// `Message-Type: Orders.Contracts.{Record}, Orders.Contracts` (the defaults
// of Events.KafkaFlow.Namespace and .Assembly).
//
// Beside this file, {Record}.json is the JSON System.Text.Json writes for
// one instance of the record and {Record}.message-type its Message-Type;
// tests/integration/interop.rs checks orderflow's output against them and
// feeds them to orderflow's worker. Keep the three in step.
#nullable enable
using System;

namespace Orders.Contracts;

// On the orders topic (KafkaConfiguration.Orders.TopicName).
public record OrderCreated(Guid OrderId, Guid CustomerId, decimal TotalAmount, DateTime CreatedAt);
public record OrderPaid(Guid OrderId, string PaymentId, DateTime PaidAt);
public record OrderShipped(Guid OrderId, string TrackingNumber, DateTime ShippedAt);

// On the fulfilment topic (Fulfilment.Topic).
public record OrderFulfilled(Guid OrderId, string CustomerEmail, string? TrackingNumber, DateTime FulfilledAt);
public record OrderRejected(Guid OrderId, string Reason, DateTime RejectedAt);
